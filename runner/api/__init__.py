"""What a plugin sees and what runs it: the Plugin base and discovery, the
Request/Response views and their multidicts, a route's chain, the call driver
and dispatch (chain -> reply frame). Imports only proto, ops and settings.
"""
