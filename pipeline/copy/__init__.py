"""The one copy engine: `copy_image(source, destination, plan)` for every command."""
