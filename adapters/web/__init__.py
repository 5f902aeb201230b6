"""The HTTP side: the console proxy (and, later, forward-auth endpoints for
nginx, Traefik and Envoy), on aiohttp.

``requests`` holds the rules every endpoint applies to an incoming request
(where the token is, which origins and proxies to believe), framework-free;
``refusals`` maps this library's errors to HTTP answers; ``dial`` reaches a console
(TCP, the CONNECT handshake, TLS); ``relay`` moves bytes between a WebSocket
and the console's socket; ``rfb`` refuses inside RFB so noVNC shows why; ``proxy`` is the
aiohttp application and its runner.
"""
