"""Third-party style backends that tests load by import path."""
