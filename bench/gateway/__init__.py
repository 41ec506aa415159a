"""End-to-end rig: nginx with an APISIX-compatible Lua ext-plugin client, the
runner, an echo upstream and native Lua twins of the bundled plugins (see
README.md in this directory)."""
