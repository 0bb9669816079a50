# Shared by the Elixir benchmarks (decoder_bench.exs, bumblebee_generation_bench.exs):
# Code.require_file it.
# An inner backend for the shim that times another one (:persistent_term {TimedBackend, :inner}):
# every callback applies the inner backend's and adds its wall time to the caller's tally (only
# outermost calls: an inner backend's own nested calls are part of its callback). Its tensors
# are the inner backend's, since the shim dispatches on the backend it records, not on the
# data's struct.
defmodule TimedBackend do
  @moduledoc false
  @key {__MODULE__, :times}

  def init(opts), do: :persistent_term.get({__MODULE__, :inner}).init(opts)

  for {name, arity} <- Nx.Backend.behaviour_info(:callbacks), name != :init do
    args = Macro.generate_arguments(arity, __MODULE__)
    def unquote(name)(unquote_splicing(args)), do: timed(unquote(name), unquote(args))
  end

  defp timed(name, args) do
    inner = :persistent_term.get({__MODULE__, :inner})

    case Process.get(@key) do
      %{} = times ->
        Process.put(@key, :nested)
        t0 = System.monotonic_time(:nanosecond)

        try do
          apply(inner, name, args)
        after
          dt = System.monotonic_time(:nanosecond) - t0
          Process.put(@key, Map.update(times, name, {1, dt}, fn {n, t} -> {n + 1, t + dt} end))
        end

      _ ->
        apply(inner, name, args)
    end
  end

  # Runs fun with recording on: {result, %{callback => {calls, ns}}}.
  def record(fun) do
    Process.put(@key, %{})

    try do
      result = fun.()
      {result, Process.get(@key)}
    after
      Process.delete(@key)
    end
  end
end
