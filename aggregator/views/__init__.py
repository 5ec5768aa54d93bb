"""Read views of the store shaped for nomadectl and the API, and what each caller may see
(policy)."""
