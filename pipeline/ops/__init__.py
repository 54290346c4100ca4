"""Operations behind the commands: archive, restore, copy, sync, inspect, verify, gc."""
