"""The web console (/console) and its JSON API (/api/v1): see and steer the router in a browser.

Off unless ROUTER_CONSOLE_TOKENS (or ROUTER_CONSOLE_VIEWER_TOKENS) is set. `auth` decides who
may do what; `queries` says what the pages show and do, as data; `pages` renders it as HTML,
`api` as JSON, described by `openapi`; `params` reads the filters; `app` mounts it all.
"""
