"""Small, rerunnable measurements of claims of the paper (one script each)."""
