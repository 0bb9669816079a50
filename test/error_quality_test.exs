defmodule NxQuant.ErrorQualityTest do
  # Bad arguments to the file APIs are ArgumentErrors naming the argument (not
  # FunctionClauseError / CaseClauseError), and every message is valid UTF-8 even when it
  # quotes a path, a tensor name or JSON text whose bytes are not.
  use ExUnit.Case, async: true

  alias NxQuant.{Checkpoint, Convert, Core, Dense, NIF, Safetensors, Validate}
  alias NxQuant.TestReference, as: Ref

  @moduletag :tmp_dir

  defp message!(pattern, fun) do
    e = assert_raise ArgumentError, fun
    message = Exception.message(e)
    assert String.valid?(message), "not valid UTF-8: #{inspect(message)}"
    assert message =~ pattern
    message
  end

  defp checkpoint!(dir) do
    qt = Core.quantize(Ref.random_dense({4, 128}, {:f, 32}, 1))

    :ok =
      Checkpoint.save(dir, %{"l.weight" => qt, "n.weight" => Ref.random_dense({4}, {:f, 32}, 2)})

    dir
  end

  describe "ArgumentError, not FunctionClauseError / CaseClauseError" do
    test "Safetensors.read/2, read_quantized/4, info!/2", %{tmp_dir: dir} do
      checkpoint!(dir)
      f = Safetensors.open!(Path.join(dir, "model.safetensors"))

      message!(~r"read/2 expects an %NxQuant.Safetensors\{\} from open!/1, got: %\{\}", fn ->
        Safetensors.read(%{}, "a")
      end)

      message!(~r"read/2 expects a tensor name \(a binary\), got: :a", fn ->
        Safetensors.read(f, :a)
      end)

      message!(~r"read_quantized/4 expects an %NxQuant.Safetensors\{\}", fn ->
        Safetensors.read_quantized(nil, "l", 4, 64)
      end)

      message!(~r"read_quantized/4 option :bits must be one of", fn ->
        Safetensors.read_quantized(f, "l", 7, 64)
      end)

      message!(~r"info!/2 expects a tensor name", fn -> Safetensors.info!(f, 5) end)
    end

    test "Safetensors.write/3 entries", %{tmp_dir: dir} do
      path = Path.join(dir, "w.safetensors")
      d = Dense.new(<<0::32>>, {1}, {:f, 32})

      message!(
        ~r"tensor 'x' must be an %NxQuant.Dense\{\} or an %NxQuant.QuantizedTensor\{\}, got: 5",
        fn ->
          Safetensors.write(path, [{"x", 5}])
        end
      )

      message!(~r"entries must be \{name, tensor\} tuples, got: :x", fn ->
        Safetensors.write(path, [:x])
      end)

      message!(~r"entries must be a list of \{name, tensor\}, got: %\{\}", fn ->
        Safetensors.write(path, %{})
      end)

      message!(~r"a tensor name must be a binary, got: :x", fn ->
        Safetensors.write(path, [{:x, d}])
      end)

      message!(~r"tensor 'x' shape must be a tuple", fn ->
        Safetensors.write(path, [{"x", %{d | shape: [1]}}])
      end)

      refute File.exists?(path)
    end

    test "Checkpoint.load/2 and open/2 options", %{tmp_dir: dir} do
      checkpoint!(dir)

      message!(
        ~r"load/2 option :only must be a list of tensor names or a 1-arity function, got: :x",
        fn ->
          Checkpoint.load(dir, only: :x)
        end
      )

      message!(~r"load/2 options must be a keyword list, got: :x", fn ->
        Checkpoint.load(dir, :x)
      end)

      message!(~r"open/2 options must be a keyword list", fn -> Checkpoint.open(dir, [1]) end)

      message!(~r"open/2 path must be a string \(or chardata\), got: 5", fn ->
        Checkpoint.open(5)
      end)

      assert Map.keys(Checkpoint.load(dir, only: ["l.weight"])) == ["l.weight"]
    end

    test "Convert.run/3 options", %{tmp_dir: dir} do
      src = Path.join(dir, "src")
      File.mkdir_p!(src)
      Checkpoint.save(src, %{"a.weight" => Ref.random_dense({4, 128}, {:f, 32}, 3)})
      dst = Path.join(dir, "dst")

      message!(~r"option :skip must be a list of substrings or regexes, got: \[5\]", fn ->
        Convert.run(src, dst, skip: [5])
      end)

      message!(~r"option :skip must be a list", fn -> Convert.run(src, dst, skip: "a") end)

      message!(~r"option :embeddings must be a boolean", fn ->
        Convert.run(src, dst, embeddings: 1)
      end)

      message!(~r"option :progress must be nil or a 1-arity function", fn ->
        Convert.run(src, dst, progress: 1)
      end)

      message!(~r"convert options must be a keyword list", fn -> Convert.run(src, dst, :x) end)
      refute File.exists?(dst)
    end
  end

  describe "messages quoting bytes that are not UTF-8 are valid UTF-8" do
    test "1. Safetensors.open!/1 of a path that is not UTF-8 (the NIF's message)", %{tmp_dir: dir} do
      m = message!(~r"\\xFF", fn -> Safetensors.open!(Path.join(dir, <<"no", 0xFF, ".st">>)) end)
      assert m =~ "no\\xFF.st"
    end

    test "2. a tensor name that is not UTF-8: read/2 (Elixir) and the raw NIF", %{tmp_dir: dir} do
      checkpoint!(dir)
      f = Safetensors.open!(Path.join(dir, "model.safetensors"))

      assert message!(~r"has no tensor named", fn -> Safetensors.read(f, <<0xC3>>) end) =~
               "'\\xC3'"

      assert message!(~r"names no tensor", fn -> NIF.safetensors_tensor(f.ref, <<"a", 0xFE>>) end) =~
               "'a\\xFE'"
    end

    test "3. JSON whose bytes are not UTF-8 (nlohmann quotes what it read)", %{tmp_dir: dir} do
      message!(~r"invalid JSON", fn -> NIF.json_decode(<<"{\"a\": \"", 0xFF, 0xFE>>) end)
      message!(~r"invalid JSON", fn -> NIF.json_decode(<<"{", 0xE2, 0x82>>) end)
      checkpoint!(dir)
      File.write!(Path.join(dir, "config.json"), <<"{\"x\": ", 0xFF, "}">>)
      message!(~r"config.json: json_decode/1: invalid JSON", fn -> Checkpoint.open(dir) end)
    end

    test "4. Checkpoint.open/1 of a path that is not UTF-8", %{tmp_dir: dir} do
      m =
        message!(~r"no such checkpoint", fn -> Checkpoint.open(Path.join(dir, <<0xFF, 0xFE>>)) end)

      assert m =~ "\\xFF\\xFE"
    end

    test "5. Checkpoint.fetch!/2 of a name that is not UTF-8, in a directory that is not", %{
      tmp_dir: dir
    } do
      sub = Path.join(dir, <<"m", 0xE9>>)
      ckpt = Checkpoint.open(checkpoint!(sub))
      m = message!(~r"has no tensor", fn -> Checkpoint.fetch!(ckpt, <<"x", 0x80>>) end)
      assert m =~ "m\\xE9 has no tensor 'x\\x80'"
    end

    test "a long message cut to the NIF's buffer never ends inside a character", %{tmp_dir: dir} do
      path = Path.join(dir, String.duplicate("é", 400))
      m = message!(~r"safetensors_open/2", fn -> Safetensors.open!(path) end)
      assert byte_size(m) >= 500
    end

    test "printable/1 escapes exactly the invalid bytes" do
      assert Validate.printable("héllo") == "héllo"
      assert Validate.printable(<<"a", 0xFF, "é", 0xC3>>) == "a\\xFFé\\xC3"
      # a surrogate encoded in UTF-8 and an overlong "/" are invalid
      assert Validate.printable(<<0xED, 0xA0, 0x80>>) == "\\xED\\xA0\\x80"
      assert Validate.printable(<<0xC0, 0xAF>>) == "\\xC0\\xAF"
    end
  end
end
