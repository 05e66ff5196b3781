"""Small generic helpers (hashing, JSON, device identity) shared by edge/ and trainer/."""
