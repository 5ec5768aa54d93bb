"""What administrators' commands do on the head node and how nomadectl reaches the aggregator:
hooks setup, node keys, starting the daemons, system checks, the API client, `nomadectl check`'s
request."""
