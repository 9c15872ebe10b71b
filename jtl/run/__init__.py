"""The trainer (`train`) and its pieces: the config check before it, the non-finite guard,
early stopping, and soups that combine finished runs through its evaluation."""
