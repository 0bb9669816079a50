# Tests tagged :nx need Nx (not installable where Hex is unreachable); they run wherever Nx is.
exclude =
  if Code.ensure_loaded?(Nx) do
    {:ok, _} = Application.ensure_all_started(:nx)
    []
  else
    [:nx]
  end

ExUnit.start(exclude: exclude)
