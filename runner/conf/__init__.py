"""The conf store: PrepareConf's tokens -> parsed chains, each worker's LRU in
front of a backend that every worker shares. Imports api, ops, proto and settings.
"""
