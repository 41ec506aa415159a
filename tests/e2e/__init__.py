"""End-to-end tests: nginx + the Lua ext-plugin client + the runner."""
