"""The processes and their sockets: start-up, the supervisor (never an event
loop), the workers, the listening socket, the pool the workers share (balanced
accept, hand-over of connections), each connection's protocol glue and the
watchdog. May import every lower room (api, conf, ops, compat, proto); only
the CLI imports this one.
"""
