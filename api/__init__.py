"""The HTTP gateway: validates, admits, produces and waits for replies."""
