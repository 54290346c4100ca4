"""Store test bed fixtures: moto_server and the OSS protocol server."""
