defmodule NxQuant.CheckpointMoeTest do
  # Mixture-of-experts checkpoints as mlx-lm's SwitchLinear stores them: NAME.weight
  # {E, N, K * bits / 32} u32 with NAME.scales / NAME.biases {E, N, K / group_size}, written
  # here as raw safetensors entries with a config.json quantization block. They load as batched
  # quantized tensors {E, N, K}, multiply expert by expert, and save back in the same layout.
  use ExUnit.Case, async: true

  alias NxQuant.{Checkpoint, Core, Dense, Safetensors}
  alias NxQuant.TestReference, as: Ref

  @moduletag :tmp_dir

  @experts 4
  @prefix "model.layers.0.mlp.switch_mlp"

  # The MLX layout of a {E, N, K} weight: each part with the expert axis in front.
  defp mlx_parts(w, bits, gs) do
    qt = Core.quantize(w, bits: bits, group_size: gs)
    {e, n, _k} = w.shape

    parts =
      for {key, %Dense{shape: {_, width}} = part} <- Core.parts(qt),
          into: %{},
          do: {key, %{part | shape: {e, div(n, 1), width}}}

    {qt, parts}
  end

  defp write_checkpoint!(dir) do
    gate = Ref.random_dense({@experts, 32, 64}, {:bf, 16}, 1)
    down = Ref.random_dense({@experts, 64, 32}, {:bf, 16}, 2)
    {_, gate_parts} = mlx_parts(gate, 4, 64)
    {_, down_parts} = mlx_parts(down, 8, 32)
    norm = Ref.random_dense({64}, {:bf, 16}, 3)

    entries = [
      {"#{@prefix}.gate_proj.weight", gate_parts.packed},
      {"#{@prefix}.gate_proj.scales", gate_parts.scales},
      {"#{@prefix}.gate_proj.biases", gate_parts.biases},
      {"#{@prefix}.down_proj.weight", down_parts.packed},
      {"#{@prefix}.down_proj.scales", down_parts.scales},
      {"#{@prefix}.down_proj.biases", down_parts.biases},
      {"model.norm.weight", norm}
    ]

    File.mkdir_p!(dir)
    :ok = Safetensors.write(Path.join(dir, "model.safetensors"), entries, %{"format" => "mlx"})

    config = %{
      "model_type" => "qwen3_moe",
      "quantization" => %{
        "bits" => 4,
        "group_size" => 64,
        "#{@prefix}.down_proj" => %{"bits" => 8, "group_size" => 32}
      }
    }

    Checkpoint.write_config(dir, config)
    entries
  end

  for mmap <- [true, false] do
    test "3-D expert tensors load as batched quantized tensors (mmap: #{mmap})", %{tmp_dir: dir} do
      entries = write_checkpoint!(dir)
      tensors = Checkpoint.load(dir, mmap: unquote(mmap))
      gate = tensors["#{@prefix}.gate_proj.weight"]
      down = tensors["#{@prefix}.down_proj.weight"]
      assert %NxQuant.QuantizedTensor{shape: {4, 32, 64}, type: {:s, 4}} = gate
      assert %NxQuant.QuantizedTensor{shape: {4, 64, 32}, type: {:s, 8}} = down
      assert gate.config.group_size == 64 and down.config.group_size == 32

      # the stored bytes are the file's
      stored = Map.new(entries)

      for {key, part} <- Core.parts(gate),
          do: assert(part.data == stored["#{@prefix}.gate_proj.#{key(key)}"].data)

      # gather_qmm over the loaded experts: token t against experts rhs[t]
      x = Ref.random_dense({3, 1, 1, 64}, {:f, 32}, 9)
      rhs = [3, 0, 3]

      idx = %Dense{
        data: for(i <- rhs, into: <<>>, do: <<i::64-native>>),
        shape: {3, 1},
        type: {:s, 64}
      }

      out = Core.gather_qmm(x, gate, rhs_indices: idx)
      assert out.shape == {3, 1, 1, 32}
      ws = gate |> Core.parts() |> Ref.dequantize(64, 4, 64) |> Enum.chunk_every(32)

      for {{got, e}, t} <- Enum.with_index(Enum.zip(Enum.chunk_every(Ref.rows(out), 1), rhs)) do
        x_t = x |> Ref.rows() |> Enum.at(t)
        expected = Ref.dot([x_t], Enum.at(ws, e), true)
        # bf16 scales: the kernel's f32 weight vs MLX's dequantize rounded to bf16
        bound = Ref.abs_dot([x_t], Enum.at(ws, e), true)

        for {{a, b}, c} <- Enum.zip(Enum.zip(hd(got), hd(expected)), hd(bound)),
            do: assert(abs(a - b) <= 2 * :math.pow(2, -8) * c + 1.0e-6, "token #{t}")
      end
    end
  end

  test "save writes batched tensors back in MLX's layout", %{tmp_dir: dir} do
    src = Path.join(dir, "src")
    dst = Path.join(dir, "dst")
    entries = write_checkpoint!(src)
    :ok = Checkpoint.save(dst, Checkpoint.load(src), config: %{"model_type" => "qwen3_moe"})

    f = Safetensors.open!(Path.join(dst, "model.safetensors"))

    for {name, %Dense{shape: shape, type: type} = original} <- entries do
      assert f.tensors[name].shape == shape, name
      assert Safetensors.read(f, name) == %{original | type: type}, name
    end

    back = Checkpoint.load(dst)
    assert %{shape: {4, 32, 64}, type: {:s, 4}} = back["#{@prefix}.gate_proj.weight"]
    assert %{shape: {4, 64, 32}, type: {:s, 8}} = back["#{@prefix}.down_proj.weight"]
  end

  defp key(:packed), do: "weight"
  defp key(other), do: Atom.to_string(other)
end
