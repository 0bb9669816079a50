# Tests tagged :nx need Nx (not installable where Hex is unreachable); they run wherever Nx is.
exclude = if Code.ensure_loaded?(Nx), do: [], else: [:nx]
ExUnit.start(exclude: exclude)
