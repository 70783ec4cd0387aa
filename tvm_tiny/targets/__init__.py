"""Board profiles (data), host and cross toolchains, where the shipped C sources live."""
