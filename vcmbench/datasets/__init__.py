"""Dataset adapters for the official layouts of each dataset."""
