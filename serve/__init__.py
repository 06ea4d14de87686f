"""Bundle export / load / verify and the Ray Serve deployment (issue 4)."""
