"""The websocket relay and its parts."""
