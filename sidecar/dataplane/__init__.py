"""The proxy's I/O: the listener, the request handler, the upstream pool and its connections.

Decisions (routing, balancing, and the resilience layer) live in `sidecar.core`; this
package performs what they decide.
"""
