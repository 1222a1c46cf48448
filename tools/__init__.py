"""Command-line tools and helpers people use around the system."""
