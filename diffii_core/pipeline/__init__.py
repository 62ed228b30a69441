"""The method's steps (`steps`), and `augment`, which runs them all in one process."""
