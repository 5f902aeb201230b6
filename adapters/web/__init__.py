"""The HTTP side: the console proxy (and, later, forward-auth endpoints for
nginx, Traefik and Envoy), on aiohttp.

``requests`` holds the rules every endpoint applies to an incoming request
(where the token is, which origins and proxies to believe), framework-free;
``refusals`` maps this library's errors to HTTP answers; ``relay`` moves
bytes between a WebSocket and a console's TCP socket; ``proxy`` is the
aiohttp application and its runner.
"""
