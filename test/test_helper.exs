# Tests tagged :nx need Nx (not installable where Hex is unreachable); they run wherever Nx is.
# Tests tagged :bumblebee need Bumblebee (and Nx) likewise; :peer ones also start :peer nodes.
exclude =
  if Code.ensure_loaded?(Nx) do
    {:ok, _} = Application.ensure_all_started(:nx)
    []
  else
    [:nx]
  end

exclude =
  if Code.ensure_loaded?(Bumblebee) do
    {:ok, _} = Application.ensure_all_started(:bumblebee)
    exclude
  else
    [:bumblebee | exclude]
  end

ExUnit.start(exclude: exclude)
