defmodule NxQuant.SchedulerFairnessTest do
  # quantize / dequantize / quantized_tensor while 8 processes loop on them: a ping process doing
  # round trips with an echo process must still get through. Calls estimated over 0.1 ms run
  # on dirty schedulers (c_src/nif/terms.h kConversionBudgetNs), so the issue's case, 8 loops
  # on ~0.45 ms quantize calls, leaves the normal schedulers free: worst ping <= 20 ms. Shorter
  # calls stay on the normal schedulers and report their time (enif_consume_timeslice), so the
  # loops rotate with the ping like loops of Elixir code: there the bound is 50 ms or 4x the
  # worst ping behind 8 loops of plain Elixir code, whichever is larger (these loops gave 12-17
  # ms at load 5 and up to ~110 ms with other test suites running beside them; the issue's 20 ms
  # is for its own case, asserted above). Before (no reports, a 200,000-value dirty
  # threshold, all these sizes on normal schedulers) every case hit ExUnit's 60 s timeout, and
  # 20 pings behind the 0.45 ms quantize loops did not get through in 10 minutes.
  #
  # This measures a latency bound, not speed. On a machine shared with other work the OS may
  # stall the whole VM now and then, so each case gets up to @attempts runs and passes when one
  # run's worst case is within the bound; the failure message lists every run.
  use ExUnit.Case, async: false

  # Its outcome cannot depend on the kernels' dispatch level: scripts/test runs it once.
  @moduletag :dispatch_independent

  alias NxQuant.NIF

  @loopers 8
  # the floor of the bound for calls that stay on normal schedulers (see the top)
  @normal_bound_ms 50
  @pings 150
  @attempts 3

  defp f32_matrix(rows, cols) do
    for i <- 1..(rows * cols), into: <<>>, do: <<:math.sin(i * 0.1)::float-32-little>>
  end

  # The worst ping round trip (ms) while @loopers processes loop on `call`.
  defp worst_ping_ms(call) do
    parent = self()

    loopers =
      for _ <- 1..@loopers do
        spawn_link(fn ->
          send(parent, :started)
          loop(call)
        end)
      end

    for _ <- loopers, do: assert_receive(:started, 5_000)

    echo =
      spawn_link(fn ->
        echo_loop()
      end)

    worst =
      Enum.reduce(1..@pings, 0, fn _, worst ->
        t0 = System.monotonic_time(:microsecond)
        send(echo, {:ping, self()})

        receive do
          :pong -> :ok
        after
          10_000 -> flunk("no pong within 10 s")
        end

        rtt = System.monotonic_time(:microsecond) - t0
        Process.sleep(1)
        max(worst, rtt)
      end)

    for pid <- [echo | loopers] do
      Process.unlink(pid)
      Process.exit(pid, :kill)
    end

    worst / 1000
  end

  # Collecting now and then bounds the native memory of the results (a resource's memory is
  # off-heap, unseen by the process's own garbage collection trigger).
  defp loop(call, n \\ 0) do
    call.()
    if rem(n, 32) == 31, do: :erlang.garbage_collect()
    loop(call, n + 1)
  end

  defp echo_loop do
    receive do
      {:ping, from} -> send(from, :pong)
    end

    echo_loop()
  end

  # Passes when, in one of @attempts runs, the worst ping behind loops on `call` is within
  # `bound_ms` or (with `relative: true`) within 4x the worst ping behind 8 loops of plain
  # Elixir code measured just before: the machine's own noise, which on a loaded 2-core box
  # reaches tens of ms. Without timeslice reports the pings wait for minutes either way.
  defp assert_fair(name, bound_ms, call, relative \\ false) do
    elixir_loop = fn -> Enum.reduce(1..1000, 0, &(&1 + &2)) end

    runs =
      Enum.reduce_while(1..@attempts, [], fn _, runs ->
        bound = if relative, do: max(bound_ms, 4 * worst_ping_ms(elixir_loop)), else: bound_ms
        worst = worst_ping_ms(call)
        runs = [{worst, bound} | runs]
        if worst <= bound, do: {:halt, runs}, else: {:cont, runs}
      end)

    {worst, bound} = hd(runs)

    assert worst <= bound,
           "#{name}: the ping's worst round trip and its bound were " <>
             "#{inspect(Enum.reverse(runs))} ms in #{length(runs)} runs"
  end

  # Sizes: the issue's ~0.45 ms quantize (dirty) and others estimated over 0.1 ms (dirty),
  # then sizes estimated just under it (0.05-0.09 ms: normal schedulers).
  test "quantize loops leave other processes running" do
    big = f32_matrix(192, 1024)
    assert_fair("quantize 192x1024", 20, fn -> NIF.quantize(big, 192, 1024, :f32, 4, 64, 1) end)
    small = f32_matrix(32, 1024)

    assert_fair(
      "quantize 32x1024",
      @normal_bound_ms,
      fn -> NIF.quantize(small, 32, 1024, :f32, 4, 64, 1) end,
      true
    )
  end

  test "dequantize loops leave other processes running" do
    big = NIF.quantize(f32_matrix(64, 1024), 64, 1024, :f32, 4, 64, 1)
    assert_fair("dequantize 64x1024", 20, fn -> NIF.dequantize(big, false) end)
    assert_fair("dequantize 64x1024 (transposed)", 20, fn -> NIF.dequantize(big, true) end)
    small = NIF.quantize(f32_matrix(16, 1024), 16, 1024, :f32, 4, 64, 1)

    assert_fair(
      "dequantize 16x1024",
      @normal_bound_ms,
      fn -> NIF.dequantize(small, false) end,
      true
    )

    assert_fair(
      "dequantize 16x1024 (transposed)",
      @normal_bound_ms,
      fn -> NIF.dequantize(small, true) end,
      true
    )
  end

  test "quantized_tensor loops leave other processes running" do
    for {rows, relative} <- [{512, false}, {64, true}] do
      ref = NIF.quantize(f32_matrix(rows, 1024), rows, 1024, :f32, 8, 32, 1)
      {packed, scales, biases} = NIF.parts(ref)

      call = fn -> NIF.quantized_tensor(packed, scales, biases, rows, 1024, :f32, 8, 32) end
      bound = if relative, do: @normal_bound_ms, else: 20
      assert_fair("quantized_tensor #{rows}x1024 8-bit", bound, call, relative)
    end
  end
end
