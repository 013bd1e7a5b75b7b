"""`pyserve bench`: keep-alive HTTP load against a server, and the report of what it sustained."""
