"""Many runs from one file: ``chain`` (teacher → assistants → student) and ``sweep`` (a grid), reusing finished
runs and resuming interrupted ones (``reuse``). Every run goes through ``kdlab.api``, so every task works."""
