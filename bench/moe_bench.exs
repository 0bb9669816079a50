# The experts of a Qwen3-30B-A3B-shaped mixture-of-experts block through NxQuant.Core.gather_qmm
# (the NIF path a MoE layer takes): 128 experts, top-8 routing, hidden 2048, expert
# intermediate 768; gate/up {128, 768, 2048} and down {128, 2048, 768} quantized 4-bit affine,
# group size 64, bf16 scales/biases, and again in mxfp4 (one E8M0 scale byte per 32 values, no
# biases: gpt-oss's experts). Random packed words: speed does not depend on the values.
#
# Per block: gate and up (x {T, 1, 1, 2048} bf16, rhs_indices {T, 8}), then down on the up
# output ({T, 8, 1, 768}, f32; the SiLU-gate product and the weighted sum are elementwise and
# left out). Routings cycle through 32 random top-8 draws and blocks through 3 layers' experts
# (340 MB each: this machine reports a 480 MB L3, which one layer would fit in), so consecutive
# blocks read different experts from memory. Reported: time per block, the bytes of
# expert weights the block reads (distinct selected experts x their packed words, scales and
# biases, all three projections), that read rate, and its ratio to the machine's read
# bandwidth (bench/read_bandwidth.exs; set NX_QUANT_BENCH to a built nx_quant_bench for the
# C++ probe). The machine may be shared: give the load average with any figure.
#
# Run: MIX_ENV=prod mix run bench/moe_bench.exs   (no Nx needed)
Code.require_file("read_bandwidth.exs", __DIR__)

defmodule MoeBench do
  alias NxQuant.{Core, Dense}

  @experts 128
  @top_k 8
  @hidden 2048
  @inter 768
  @group 64
  @routings 32

  def experts(rows, cols, seed, :mxfp4) do
    :rand.seed(:exsss, {seed, 1, 2})
    packed = :crypto.strong_rand_bytes(div(@experts * rows * cols, 2))
    groups = div(@experts * rows * cols, 32)
    # E8M0 scales 2^-11 .. 2^-8
    scales = for _ <- 1..groups, into: <<>>, do: <<116 + :rand.uniform(4) - 1>>

    Core.quantized_tensor(
      packed,
      %Dense{data: scales, shape: {@experts, rows, div(cols, 32)}, type: {:u, 8}},
      nil,
      {@experts, rows, cols},
      mode: :mxfp4
    )
  end

  def experts(rows, cols, seed, :affine) do
    :rand.seed(:exsss, {seed, 1, 2})
    packed = :crypto.strong_rand_bytes(div(@experts * rows * cols, 2))
    groups = div(@experts * rows * cols, @group)
    # bf16 scales ~5e-4..1e-3 and biases ~ -0.008..-0.016 (a spread of 128 values each)
    scales = for _ <- 1..groups, into: <<>>, do: <<0x3A00 + :rand.uniform(128) - 1::16-little>>
    biases = for _ <- 1..groups, into: <<>>, do: <<0xBC00 + :rand.uniform(128) - 1::16-little>>
    gshape = {@experts, rows, div(cols, @group)}

    Core.quantized_tensor(
      packed,
      %Dense{data: scales, shape: gshape, type: {:bf, 16}},
      %Dense{data: biases, shape: gshape, type: {:bf, 16}},
      {@experts, rows, cols},
      bits: 4,
      group_size: @group
    )
  end

  def bytes_per_expert(qt) do
    %{packed: p, scales: s, biases: b} = Core.parts(qt)
    div(byte_size(p.data) + byte_size(s.data) + if(b, do: byte_size(b.data), else: 0), @experts)
  end

  def routings(tokens) do
    :rand.seed(:exsss, {42, tokens, 7})

    for _ <- 1..@routings do
      ids = for _ <- 1..tokens, do: Enum.take(Enum.shuffle(0..(@experts - 1)), @top_k)
      data = for i <- List.flatten(ids), into: <<>>, do: <<i::64-signed-native>>

      {%Dense{data: data, shape: {tokens, @top_k}, type: {:s, 64}},
       ids |> List.flatten() |> Enum.uniq() |> length()}
    end
  end

  def block(x, {gate, up, down}, rhs) do
    g = Core.gather_qmm(x, gate, rhs_indices: rhs, out_type: {:f, 32})
    u = Core.gather_qmm(x, up, rhs_indices: rhs, out_type: {:f, 32})
    Core.gather_qmm(u, down, rhs_indices: rhs, out_type: {:f, 32})
    g
  end

  def run do
    {gbs, how} = ReadBandwidth.measure()
    {load, _} = :os.cmd(~c"cat /proc/loadavg") |> to_string() |> Float.parse()
    IO.puts("read bandwidth #{Float.round(gbs, 1)} GB/s (#{how}); load average #{load}")

    for {mode, name} <- [affine: "4-bit affine g64 bf16", mxfp4: "mxfp4"] do
      IO.puts(
        "MoE block (Qwen3-30B-A3B experts: 128 x {768, 2048} gate/up, {2048, 768} down, #{name})"
      )

      run_mode(mode, gbs)
    end

    {load_after, _} = :os.cmd(~c"cat /proc/loadavg") |> to_string() |> Float.parse()
    IO.puts("load average after: #{load_after}")
  end

  defp run_mode(mode, gbs) do
    layers =
      for l <- 0..2 do
        {experts(@inter, @hidden, 3 * l + 1, mode), experts(@inter, @hidden, 3 * l + 2, mode),
         experts(@hidden, @inter, 3 * l + 3, mode)}
      end

    [{gate, up, down} | _] = layers
    per_expert = bytes_per_expert(gate) + bytes_per_expert(up) + bytes_per_expert(down)
    IO.puts("tokens | ms/block | experts read | MB read | GB/s | % of read bandwidth")

    for tokens <- [1, 8] do
      routings = routings(tokens)

      x = %Dense{
        data: :binary.copy(<<0x3F80::16-little>>, tokens * @hidden),
        shape: {tokens, 1, 1, @hidden},
        type: {:bf, 16}
      }

      run = fn ->
        for {{rhs, _}, i} <- Enum.with_index(routings),
            do: block(x, Enum.at(layers, rem(i, 3)), rhs)
      end

      # warm up (page in the experts once)
      run.()
      reps = if tokens == 1, do: 8, else: 2

      times =
        for _ <- 1..reps do
          {us, _} = :timer.tc(run)
          us / @routings
        end

      us = Enum.min(times)
      distinct = (routings |> Enum.map(&elem(&1, 1)) |> Enum.sum()) / @routings
      bytes = distinct * per_expert
      rate = bytes / (us * 1000)

      IO.puts(
        "#{tokens} | #{Float.round(us / 1000, 2)} | #{Float.round(distinct, 1)} | " <>
          "#{Float.round(bytes / 1.0e6, 1)} | #{Float.round(rate, 2)} | #{round(100 * rate / gbs)}%"
      )
    end
  end
end

MoeBench.run()
