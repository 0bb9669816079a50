defmodule NxQuant.SafetensorsTest do
  # safetensors through the NIF: hand-built files (header bytes written out here), malformed
  # ones, quantized triplets over the mapping, write/read round trips, unmapping.
  use ExUnit.Case, async: false

  alias NxQuant.{Checkpoint, Core, Dense, NIF, Safetensors}
  alias NxQuant.TestReference, as: Ref

  @moduletag :tmp_dir

  defp file!(dir, name, json, data) do
    path = Path.join(dir, name)
    File.write!(path, [<<byte_size(json)::little-64>>, json, data])
    path
  end

  test "a hand-built file: header, dtypes, shapes, data over the mapping", %{tmp_dir: dir} do
    json =
      ~s({"__metadata__":{"format":"mlx"},) <>
        ~s("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},) <>
        ~s("b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]},) <>
        ~s("c":{"dtype":"U8","shape":[],"data_offsets":[12,13]}})

    data =
      <<1.5::float-32-little, -2.0::float-32-little, 0x3F80::16-little, 0xC000::16-little, 7>>

    path = file!(dir, "x.safetensors", json, data)
    f = Safetensors.open!(path)
    assert f.metadata == %{"format" => "mlx"}
    assert f.tensors["a"] == %{dtype: "F32", type: {:f, 32}, shape: {2}, bytes: 8}
    assert f.tensors["b"].type == {:bf, 16}

    assert %Dense{data: <<1.5::float-32-little, -2.0::float-32-little>>, shape: {2}} =
             Safetensors.read(f, "a")

    assert Safetensors.read(f, "b").data == <<0x3F80::16-little, 0xC000::16-little>>
    assert Safetensors.read(f, "c") == %Dense{data: <<7>>, shape: {}, type: {:u, 8}}

    assert_raise ArgumentError, ~r/has no tensor named 'nope'/, fn ->
      Safetensors.read(f, "nope")
    end
  end

  test "malformed files are clear errors naming the file", %{tmp_dir: dir} do
    ok = ~s({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})

    cases = [
      {"short", fn p -> File.write!(p, <<1, 2, 3>>) end, "shorter than the 8-byte header length"},
      {"past_eof", fn p -> File.write!(p, [<<byte_size(ok) + 100::little-64>>, ok]) end,
       "runs past the end"},
      {"bad_json", fn p -> File.write!(p, [<<5::little-64>>, "{\"t\":"]) end,
       "not valid UTF-8 JSON"},
      {"non_utf8", fn p -> File.write!(p, [<<4::little-64>>, <<"{\"", 0xFF, "\"">>]) end,
       "not valid UTF-8 JSON"},
      {"duplicate",
       fn p ->
         j =
           ~s({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"t":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})

         File.write!(p, [<<byte_size(j)::little-64>>, j, <<0, 0>>])
       end, "names tensor 't' twice"},
      {"unknown_dtype",
       fn p ->
         j = ~s({"t":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})
         File.write!(p, [<<byte_size(j)::little-64>>, j, <<0>>])
       end, "unknown dtype \"Q4\""},
      {"size_mismatch",
       fn p ->
         j = ~s({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})
         File.write!(p, [<<byte_size(j)::little-64>>, j, <<0::64>>])
       end, "needs 12 bytes but data_offsets [0, 8] give 8"},
      {"out_of_range", fn p -> File.write!(p, [<<byte_size(ok)::little-64>>, ok, <<0::32>>]) end,
       "run past the data section (4 bytes)"},
      {"overlap",
       fn p ->
         j =
           ~s({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})

         File.write!(p, [<<byte_size(j)::little-64>>, j, <<0, 0, 0>>])
       end, "overlapping data_offsets"}
    ]

    for {name, make, words} <- cases do
      path = Path.join(dir, name)
      make.(path)
      error = assert_raise ArgumentError, fn -> Safetensors.open!(path) end
      assert error.message =~ words, "#{name}: #{error.message}"
      assert error.message =~ path
      assert {:error, _} = Safetensors.open(path)
    end

    assert_raise ArgumentError, ~r/No such file/, fn ->
      Safetensors.open!(Path.join(dir, "missing"))
    end

    assert_raise ArgumentError, ~r/not a regular file/, fn -> Safetensors.open!(dir) end
  end

  test "quantize -> write -> read gives the same packed words, scales and biases", %{tmp_dir: dir} do
    for bits <- [2, 3, 4, 5, 6, 8], type <- [{:f, 32}, {:bf, 16}] do
      w = Ref.random_dense({3, 4, 128}, type, bits)
      qt = Core.quantize(w, bits: bits, group_size: 64)
      bias = Ref.random_dense({7}, {:f, 32}, 1)
      path = Path.join(dir, "q#{bits}.safetensors")
      :ok = Safetensors.write(path, [{"layer.weight", qt}, {"layer.bias", bias}], %{"k" => "v"})

      f = Safetensors.open!(path)
      assert f.metadata == %{"k" => "v"}
      assert f.tensors["layer.weight"].shape == {3, 4, div(128 * bits, 32)}
      assert f.tensors["layer.scales"].shape == {3, 4, 2}
      back = Safetensors.read_quantized(f, "layer", bits, 64)
      assert back.shape == {3, 4, 128} and back.dtype == type

      for {key, part} <- Core.parts(qt), do: assert(Core.parts(back)[key].data == part.data)
      assert Safetensors.read(f, "layer.bias") == bias
      x = Ref.random_dense({2, 128}, {:f, 32}, 5)
      # as the 12 x 128 matrix both hold, and as the batch of three 4 x 128 matrices
      as_matrix = &%{&1 | shape: {12, 128}}

      assert Core.quantized_matmul(x, as_matrix.(back)).data ==
               Core.quantized_matmul(x, as_matrix.(qt)).data

      assert Core.quantized_matmul(x, back).data == Core.quantized_matmul(x, qt).data
    end
  end

  test "a triplet whose shapes disagree with bits/group_size names the layer", %{tmp_dir: dir} do
    qt = Core.quantize(Ref.random_dense({4, 128}, {:f, 32}, 3), bits: 4, group_size: 64)
    path = Path.join(dir, "q.safetensors")
    Safetensors.write(path, [{"l.weight", qt}])
    f = Safetensors.open!(path)

    error = assert_raise ArgumentError, fn -> Safetensors.read_quantized(f, "l", 8, 64) end
    assert error.message =~ "quantized layer 'l'"
    assert error.message =~ "bits 8 / group_size 64 do not match"

    assert_raise ArgumentError, ~r/no tensor named 'm.weight'/, fn ->
      Safetensors.read_quantized(f, "m", 4, 64)
    end
  end

  test "the raw NIF checks rows/cols against the triplet's shapes, not only its byte counts",
       %{tmp_dir: dir} do
    qt = Core.quantize(Ref.random_dense({2, 4, 128}, {:f, 32}, 4), bits: 4, group_size: 64)
    path = Path.join(dir, "q.safetensors")
    Safetensors.write(path, [{"l.weight", qt}])
    f = Safetensors.open!(path)

    raw = fn rows, cols, bits, gs ->
      NIF.safetensors_quantized(f.ref, "l.weight", "l.scales", "l.biases", rows, cols, bits, gs)
    end

    # the real layout (2-bit 8x256 or 8-bit 8x64 g32 would be consistent too: bits come from
    # config.json)
    assert NIF.info(raw.(8, 128, 4, 64)) == {8, 128, :f32, 4, 64}
    assert NIF.parts(raw.(8, 128, 4, 64)) == NIF.parts(qt.ref)

    # same byte counts (packed 8 x 16 words, scales 8 x 2), other shapes
    for {rows, cols, bits, gs, pattern} <- [
          {4, 256, 4, 64, ~r"leading axes multiplying to 4 for rows 4, cols 256"},
          {16, 64, 4, 64, ~r"leading axes multiplying to 16"},
          {2, 512, 4, 64, ~r"'l.weight' has shape \[2, 4, 16\], expected leading axes"},
          # not the same bytes: the scales' shape is checked too
          {8, 128, 4, 32, ~r"'l.scales' has shape \[2, 4, 2\], expected \[2, 4, 4\]"}
        ] do
      e = assert_raise ArgumentError, fn -> raw.(rows, cols, bits, gs) end
      assert e.message =~ "safetensors_quantized/8: argument"
      assert e.message =~ pattern
    end

    assert_raise ArgumentError, ~r"argument 6 \(cols\) 100 is not a multiple of group_size", fn ->
      raw.(8, 100, 4, 64)
    end
  end

  test "the file is unmapped when nothing made from it is alive", %{tmp_dir: dir} do
    qt = Core.quantize(Ref.random_dense({8, 64}, {:f, 32}, 9), group_size: 64)
    path = Path.join(dir, "m.safetensors")
    Safetensors.write(path, [{"l.weight", qt}])

    measure = fn fun ->
      parent = self()

      spawn(fn ->
        before = NIF.live_mappings()
        held = fun.()
        during = NIF.live_mappings()
        send(parent, {:during, during - before, held != nil})
      end)

      assert_receive {:during, 1, true}
      wait_for_unmap(20)
    end

    # With mmap: a dense view, a quantized tensor over the mapping: each keeps the file mapped,
    # and the mapping goes away with the process that held them.
    measure.(fn -> Safetensors.read(Safetensors.open!(path, mmap: true), "l.scales") end)

    measure.(fn -> Safetensors.read_quantized(Safetensors.open!(path, mmap: true), "l", 4, 64) end)

    # By default nothing is mapped: tensors own their bytes.
    before = NIF.live_mappings()
    owned = Safetensors.read(Safetensors.open!(path), "l.scales")
    assert NIF.live_mappings() == before
    assert owned == Safetensors.read(Safetensors.open!(path, mmap: true), "l.scales")
  end

  defp wait_for_unmap(0), do: flunk("the mapping is still alive")

  defp wait_for_unmap(n) do
    :erlang.garbage_collect()

    if NIF.live_mappings() == 0 do
      :ok
    else
      Process.sleep(20)
      wait_for_unmap(n - 1)
    end
  end

  test "references of the wrong resource type are refused by name", %{tmp_dir: dir} do
    qt = Core.quantize(Ref.random_dense({2, 64}, {:f, 32}, 9), group_size: 64)
    path = Path.join(dir, "r.safetensors")
    Safetensors.write(path, [{"l.weight", qt}])
    file = Safetensors.open!(path)

    assert_raise ArgumentError, ~r/dequantize\/2: argument 1 \(tensor\)/, fn ->
      NIF.dequantize(file.ref, false)
    end

    assert_raise ArgumentError,
                 ~r/safetensors_tensor\/2: argument 1 \(file\) must be a safetensors file reference/,
                 fn ->
                   NIF.safetensors_tensor(qt.ref, "l.weight")
                 end

    assert_raise ArgumentError, ~r/argument 1 \(file\)/, fn ->
      NIF.safetensors_tensor(make_ref(), "x")
    end

    assert_raise ArgumentError, ~r/argument 1 \(path\) must be a binary/, fn ->
      NIF.safetensors_open(:nope, false)
    end
  end

  test "JSON through nlohmann: decode, encode, errors" do
    assert NIF.json_decode(~s({"a":[1,-2,3.5,true,null,"é"],"b":{}})) ==
             %{"a" => [1, -2, 3.5, true, nil, "é"], "b" => %{}}

    assert NIF.json_encode(%{"b" => 1, a: [true, nil, "x"]}, false) ==
             ~s({"a":[true,null,"x"],"b":1})

    assert_raise ArgumentError, ~r/invalid JSON/, fn -> NIF.json_decode("{") end

    assert_raise ArgumentError, ~r/cannot encode as JSON/, fn ->
      NIF.json_encode(%{"a" => self()}, false)
    end

    assert_raise ArgumentError, ~r/deeper than 256/, fn ->
      NIF.json_decode(String.duplicate("[", 300) <> String.duplicate("]", 300))
    end
  end

  describe "checkpoints" do
    test "per-layer overrides, a dense (false) layer, sharded files, lazy fetch", %{tmp_dir: dir} do
      a = Core.quantize(Ref.random_dense({4, 128}, {:bf, 16}, 1), bits: 4, group_size: 64)
      b = Core.quantize(Ref.random_dense({4, 128}, {:bf, 16}, 2), bits: 8, group_size: 32)
      norm = Ref.random_dense({128}, {:bf, 16}, 3)
      dense = Ref.random_dense({4, 128}, {:bf, 16}, 4)

      Safetensors.write(Path.join(dir, "model-00001-of-00002.safetensors"), [
        {"m.a.weight", a},
        {"m.norm.weight", norm}
      ])

      Safetensors.write(Path.join(dir, "model-00002-of-00002.safetensors"), [
        {"m.b.weight", b},
        {"m.c.weight", dense}
      ])

      weight_map =
        %{
          "m.a.weight" => 1,
          "m.a.scales" => 1,
          "m.a.biases" => 1,
          "m.norm.weight" => 1,
          "m.b.weight" => 2,
          "m.b.scales" => 2,
          "m.b.biases" => 2,
          "m.c.weight" => 2
        }
        |> Map.new(fn {k, n} -> {k, "model-0000#{n}-of-00002.safetensors"} end)

      File.write!(
        Path.join(dir, "model.safetensors.index.json"),
        NIF.json_encode(%{"weight_map" => weight_map}, true)
      )

      Checkpoint.write_config(dir, %{
        "model_type" => "test",
        "quantization" => %{
          "group_size" => 64,
          "bits" => 4,
          "m.b" => %{"bits" => 8, "group_size" => 32},
          "m.c" => false
        }
      })

      ckpt = Checkpoint.open(dir)
      assert Checkpoint.names(ckpt) == ["m.a.weight", "m.b.weight", "m.c.weight", "m.norm.weight"]

      assert %NxQuant.QuantizedTensor{config: %{bits: 8, group_size: 32}} =
               Checkpoint.fetch!(ckpt, "m.b.weight")

      assert Checkpoint.fetch!(ckpt, "m.c.weight") == dense

      all = Checkpoint.load(dir)
      assert Core.parts(all["m.a.weight"]).packed.data == Core.parts(a).packed.data
      assert all["m.norm.weight"] == norm
      assert Map.keys(Checkpoint.load(dir, only: ["m.norm.weight"])) == ["m.norm.weight"]
    end

    test "save writes the MLX layout and a quantization block; load gives it back", %{
      tmp_dir: dir
    } do
      a = Core.quantize(Ref.random_dense({4, 128}, {:f, 16}, 1), bits: 4, group_size: 64)
      b = Core.quantize(Ref.random_dense({2, 128}, {:f, 16}, 2), bits: 4, group_size: 64)
      c = Core.quantize(Ref.random_dense({2, 128}, {:f, 16}, 3), bits: 6, group_size: 128)

      :ok =
        Checkpoint.save(dir, %{"x.weight" => a, "y.weight" => b, "z.weight" => c},
          config: %{"model_type" => "t"}
        )

      config = NIF.json_decode(File.read!(Path.join(dir, "config.json")))
      assert config["model_type"] == "t"

      assert config["quantization"] == %{
               "bits" => 4,
               "group_size" => 64,
               "mode" => "affine",
               "z" => %{"bits" => 6, "group_size" => 128, "mode" => "affine"}
             }

      assert config["quantization_config"] == config["quantization"]
      f = Safetensors.open!(Path.join(dir, "model.safetensors"))
      assert f.tensors["z.weight"] == %{dtype: "U32", type: {:u, 32}, shape: {2, 24}, bytes: 192}
      assert f.tensors["z.scales"].dtype == "F16"

      loaded = Checkpoint.load(dir)

      for {k, q} <- [{"x.weight", a}, {"y.weight", b}, {"z.weight", c}] do
        assert Core.dequantize(loaded[k]).data == Core.dequantize(q).data
      end
    end

    test "a triplet without a format anywhere is an error that says where to put it", %{
      tmp_dir: dir
    } do
      a = Core.quantize(Ref.random_dense({4, 128}, {:f, 32}, 1))
      Safetensors.write(Path.join(dir, "model.safetensors"), [{"x.weight", a}])

      assert_raise ArgumentError, ~r/quantized layer 'x' has bits nil/, fn ->
        Checkpoint.open(dir)
      end

      assert %{"x.weight" => _} = Checkpoint.load(dir, bits: 4, group_size: 64)
    end
  end

  test "convert: dense checkpoint -> quantized, loads, matmul equals quantizing in memory", %{
    tmp_dir: dir
  } do
    src = Path.join(dir, "src")
    dst = Path.join(dir, "dst")
    File.mkdir_p!(src)
    proj = Ref.random_dense({64, 128}, {:bf, 16}, 1)
    embed = Ref.random_dense({32, 128}, {:bf, 16}, 2)
    norm = Ref.random_dense({128}, {:bf, 16}, 3)
    skipped = Ref.random_dense({64, 128}, {:bf, 16}, 4)
    ids = %Dense{data: <<1::32-little, 2::32-little>>, shape: {2}, type: {:s, 32}}

    Safetensors.write(Path.join(src, "model.safetensors"), [
      {"model.embed_tokens.weight", embed},
      {"model.layers.0.proj.weight", proj},
      {"model.layers.0.norm.weight", norm},
      {"lm_head.weight", skipped},
      {"ids", ids}
    ])

    Checkpoint.write_config(src, %{"model_type" => "llama"})
    File.write!(Path.join(src, "tokenizer.json"), "{}")

    progress = fn {done, total} -> send(self(), {:progress, done, total}) end

    stats =
      NxQuant.Convert.run(src, dst, bits: 4, group_size: 64, skip: ["lm_head"], progress: progress)

    assert stats.quantized == 1 and stats.dense == 4
    assert_received {:progress, _, total} when total > 0

    assert File.read!(Path.join(dst, "tokenizer.json")) == "{}"
    config = NIF.json_decode(File.read!(Path.join(dst, "config.json")))
    assert config["model_type"] == "llama"
    assert config["quantization"] == %{"bits" => 4, "group_size" => 64, "mode" => "affine"}

    loaded = Checkpoint.load(dst)
    assert %NxQuant.QuantizedTensor{} = q = loaded["model.layers.0.proj.weight"]
    assert loaded["model.embed_tokens.weight"] == embed
    assert loaded["lm_head.weight"] == skipped
    assert loaded["ids"] == ids

    in_memory = Core.quantize(proj, bits: 4, group_size: 64)
    x = Ref.random_dense({3, 128}, {:bf, 16}, 7)
    assert Core.quantized_matmul(x, q).data == Core.quantized_matmul(x, in_memory).data

    assert_raise ArgumentError, ~r/already quantized/, fn ->
      NxQuant.Convert.run(dst, Path.join(dir, "again"))
    end

    # embeddings: true quantizes the embedding too.
    stats = NxQuant.Convert.run(src, Path.join(dir, "dst2"), embeddings: true)
    assert stats.quantized == 3
  end
end
