# The checkpoint half of the main demo: generate a dense llama-shaped bf16 checkpoint (two
# shards), convert it with NxQuant.Convert (what `mix nx_quant.convert` runs), load the result
# lazily and check a layer's fused matmul against quantizing the same weight in memory.
#
#   NX_QUANT_DEMO_LAYERS=10 scripts/demo   # ~1 GB of dense weights (the note's figure)
alias NxQuant.{Checkpoint, Convert, Core, Dense, Safetensors}

layers = String.to_integer(System.get_env("NX_QUANT_DEMO_LAYERS", "2"))
hidden = 2048
ffn = 5632
vocab = 8000
dir = Path.join(System.tmp_dir!(), "nx_quant_demo_#{System.unique_integer([:positive])}")
src = Path.join(dir, "dense")
dst = Path.join(dir, "quantized")
File.mkdir_p!(src)

# Values: a 64 KB block of bf16 numbers in [-0.1, 0.1] (varied per tensor by rotating it),
# repeated; conversion speed does not depend on the values, and generation stays fast.
:rand.seed(:exsss, {1, 2, 3})
block = for _ <- 1..32_768, into: <<>>, do: <<(:rand.uniform() - 0.5) * 0.2::float-32-little>>
block = for <<_::16, hi::16 <- block>>, into: <<>>, do: <<hi::16>>

fill = fn bytes, salt ->
  rot = rem(salt * 2 * 97, byte_size(block))
  pattern = binary_part(block, rot, byte_size(block) - rot) <> binary_part(block, 0, rot)
  reps = div(bytes, byte_size(pattern))
  [:binary.copy(pattern, reps), binary_part(pattern, 0, bytes - reps * byte_size(pattern))]
end

layer_tensors = fn i ->
  p = "model.layers.#{i}"

  [
    {"#{p}.input_layernorm.weight", {hidden}},
    {"#{p}.self_attn.q_proj.weight", {hidden, hidden}},
    {"#{p}.self_attn.k_proj.weight", {hidden, hidden}},
    {"#{p}.self_attn.v_proj.weight", {hidden, hidden}},
    {"#{p}.self_attn.o_proj.weight", {hidden, hidden}},
    {"#{p}.post_attention_layernorm.weight", {hidden}},
    {"#{p}.mlp.gate_proj.weight", {ffn, hidden}},
    {"#{p}.mlp.up_proj.weight", {ffn, hidden}},
    {"#{p}.mlp.down_proj.weight", {hidden, ffn}}
  ]
end

half = div(layers + 1, 2)

shards = [
  {"model-00001-of-00002.safetensors",
   [{"model.embed_tokens.weight", {vocab, hidden}}] ++
     Enum.flat_map(0..(half - 1)//1, layer_tensors)},
  {"model-00002-of-00002.safetensors",
   Enum.flat_map(half..(layers - 1)//1, layer_tensors) ++
     [{"model.norm.weight", {hidden}}, {"lm_head.weight", {vocab, hidden}}]}
]

{gen_us, _} =
  :timer.tc(fn ->
    for {file, tensors} <- shards do
      specs = Enum.map(tensors, fn {name, shape} -> {name, {:bf, 16}, shape} end)
      sizes = Map.new(tensors, fn {name, shape} -> {name, Tuple.product(shape) * 2} end)

      Safetensors.write_planned(
        Path.join(src, file),
        specs,
        %{"format" => "pt"},
        &fill.(sizes[&1], byte_size(&1))
      )
    end

    weight_map = for {file, tensors} <- shards, {name, _} <- tensors, into: %{}, do: {name, file}

    File.write!(
      Path.join(src, "model.safetensors.index.json"),
      NxQuant.NIF.json_encode(%{"weight_map" => weight_map}, true)
    )

    Checkpoint.write_config(src, %{
      "model_type" => "llama",
      "hidden_size" => hidden,
      "num_hidden_layers" => layers
    })
  end)

dense_bytes = src |> File.ls!() |> Enum.map(&File.stat!(Path.join(src, &1)).size) |> Enum.sum()

IO.puts(
  "dense bf16 checkpoint: #{layers} layers, #{Float.round(dense_bytes / 1.0e6, 1)} MB in 2 shards (generated in #{Float.round(gen_us / 1.0e6, 1)} s)"
)

progress = fn {done, total} ->
  IO.write(
    :stderr,
    "\r  converting: #{round(100 * done / total)}% of #{Float.round(total / 1.0e6)} MB"
  )
end

stats = Convert.run(src, dst, bits: 4, group_size: 64, progress: progress)
IO.write(:stderr, "\n")

# NX_QUANT_DEMO_COMPARE_MMAP=N: N more conversions each way, alternating, reading the source
# into owned memory (the default) or through a mapping (mmap: true), for bench/RESULTS.md.
for round <- 1..String.to_integer(System.get_env("NX_QUANT_DEMO_COMPARE_MMAP", "0"))//1,
    mmap <- [false, true] do
  s =
    Convert.run(src, Path.join(dir, "compare"), bits: 4, group_size: 64, mmap: mmap, force: true)

  IO.puts(
    "compare round #{round}, mmap: #{mmap}: #{Float.round(s.seconds, 2)} s = " <>
      "#{Float.round(s.bytes_in / 1.0e6 / s.seconds, 1)} MB/s of dense input"
  )
end

IO.puts(
  "convert (4-bit, group 64): #{stats.quantized} tensors quantized, #{stats.dense} kept dense, " <>
    "#{Float.round(stats.bytes_in / 1.0e6, 1)} MB -> #{Float.round(stats.bytes_out / 1.0e6, 1)} MB " <>
    "in #{Float.round(stats.seconds, 2)} s = #{Float.round(stats.bytes_in / 1.0e6 / stats.seconds, 1)} MB/s of dense input"
)

{open_us, ckpt} = :timer.tc(fn -> Checkpoint.open(dst) end)
name = "model.layers.0.mlp.gate_proj.weight"
{fetch_us, qt} = :timer.tc(fn -> Checkpoint.fetch!(ckpt, name) end)

IO.puts(
  "open (headers of #{map_size(ckpt.files)} shards): #{Float.round(open_us / 1000, 2)} ms; fetch #{name}: #{Float.round(fetch_us / 1000, 2)} ms (read into owned memory)"
)

source =
  Safetensors.open!(Path.join(src, "model-00001-of-00002.safetensors")) |> Safetensors.read(name)

in_memory = Core.quantize(source, bits: 4, group_size: 64)

x = %Dense{
  data: IO.iodata_to_binary(fill.(8 * hidden * 2, 5)),
  shape: {8, hidden},
  type: {:bf, 16}
}

same = Core.quantized_matmul(x, qt).data == Core.quantized_matmul(x, in_memory).data
IO.puts("matmul on the loaded layer == on quantizing it in memory: #{same}")
File.rm_rf!(dir)
unless same, do: System.halt(1)
