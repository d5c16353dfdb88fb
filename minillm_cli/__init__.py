"""Front ends over `minillm_core`: the `minillm` commands, the chat REPL and the HTTP server.
Argument parsing, terminals and web frameworks live here; the core never imports them."""
