defmodule NxQuant.FileSafetyTest do
  # Files changed underneath (truncated, rewritten in place), special files (FIFOs) where a
  # checkpoint should be, and atomic, non-destructive convert/save. Whatever could crash or
  # hang runs in a child OS process (NxQuant.ChildVM) so that it fails a test instead of
  # killing or stalling the suite.
  use ExUnit.Case, async: false

  # Its outcome cannot depend on the kernels' dispatch level: scripts/test runs it once.
  @moduletag :dispatch_independent

  alias NxQuant.{Checkpoint, ChildVM, Convert, Core, Safetensors}
  alias NxQuant.TestReference, as: Ref

  @moduletag :tmp_dir

  # A checkpoint with a dense tensor "d" and a quantized layer "q.weight".
  defp checkpoint!(dir) do
    d = Ref.random_dense({64, 128}, {:f, 32}, 1)
    q = Core.quantize(Ref.random_dense({64, 128}, {:f, 32}, 2), bits: 4, group_size: 64)
    :ok = Checkpoint.save(dir, %{"d" => d, "q.weight" => q})
    {d, q}
  end

  # Runs `body` (Elixir code; `ckpt`, `d`, `q`, `x`, `path` bound, `path` then truncated unless
  # `change` says otherwise) in a child VM; returns {status, result term or nil, output}.
  defp in_child(dir, opts, body) do
    prelude = """
    alias NxQuant.{Checkpoint, Core, Dense}
    dir = #{inspect(dir)}
    path = Path.join(dir, "model.safetensors")
    ckpt = Checkpoint.open(dir, mmap: #{Keyword.get(opts, :mmap, false)})
    d = Checkpoint.fetch!(ckpt, "d")
    q = Checkpoint.fetch!(ckpt, "q.weight")
    x = Dense.new(:binary.copy(<<1.0::float-32-little>>, 128), {1, 128}, {:f, 32})
    y0 = Core.quantized_matmul(x, q).data
    deq0 = Core.dequantize(q).data
    bytes0 = :binary.copy(d.data)
    File.write!(path, "")
    result = (#{body})
    IO.puts("RESULT:" <> Base.encode64(:erlang.term_to_binary(result)))
    """

    {output, status} = ChildVM.run(prelude)

    result =
      case Regex.run(~r/RESULT:(\S+)/, output) do
        [_, b64] -> :erlang.binary_to_term(Base.decode64!(b64))
        nil -> nil
      end

    {status, result, output}
  end

  # Each case after the shard is truncated; whether the same case with mmap: true kills the VM.
  @truncation_cases [
    {"copying a fetched dense tensor", ":binary.copy(d.data) == bytes0", :crashes},
    {"quantized_matmul on a fetched layer", "Core.quantized_matmul(x, q).data == y0", :crashes},
    {"dequantize on a fetched layer", "Core.dequantize(q).data == deq0", :crashes},
    {"quantizing a fetched dense tensor",
     "Core.dequantize(Core.quantize(d, bits: 8, group_size: 64)).shape == {64, 128}", :crashes},
    {"fetching again",
     """
     try do
       Checkpoint.fetch!(ckpt, "d")
       false
     rescue
       e in ArgumentError -> e.message =~ "changed since it was opened"
     end
     """, :error}
  ]

  describe "a checkpoint truncated after open (each case in a child VM)" do
    for {name, body, mmap} <- @truncation_cases do
      test "#{name}: by default no crash and the right answer", %{tmp_dir: dir} do
        checkpoint!(dir)
        {status, result, output} = in_child(dir, [], unquote(body))
        assert status == 0, "the child VM exited with #{status}:\n#{output}"
        assert result == true, output
      end

      # The documented risk of mmap: true is real (this is why owned memory is the default; it
      # also shows that the child harness sees a crash).
      test "#{name}: with mmap: true #{if mmap == :crashes, do: "SIGBUS kills the VM", else: "an error"}",
           %{tmp_dir: dir} do
        checkpoint!(dir)
        {status, result, output} = in_child(dir, [mmap: true], unquote(body))

        case unquote(mmap) do
          :crashes -> assert result == nil and status == 135, "#{status}: #{output}"
          :error -> assert status == 0 and result == true, output
        end
      end
    end
  end

  # Overwrites bytes in place (no truncation): what `dd conv=notrunc` or a careless writer does.
  defp rewrite_in_place!(path) do
    size = File.stat!(path).size
    {:ok, io} = :file.open(path, [:read, :write, :binary, :raw])
    :ok = :file.pwrite(io, 64, :binary.copy(<<0x5A>>, size - 64))
    :ok = :file.close(io)
  end

  test "a same-size rewrite in place changes no returned tensor or layer; a later fetch is an error",
       %{tmp_dir: dir} do
    {d, q} = checkpoint!(dir)
    path = Path.join(dir, "model.safetensors")
    # An old modification time, so the rewrite below surely changes it.
    File.touch!(path, {{2020, 1, 1}, {0, 0, 0}})
    ckpt = Checkpoint.open(dir)
    fd = Checkpoint.fetch!(ckpt, "d")
    fq = Checkpoint.fetch!(ckpt, "q.weight")
    x = Ref.random_dense({3, 128}, {:f, 32}, 5)
    y = Core.quantized_matmul(x, fq).data
    assert fd == d and y == Core.quantized_matmul(x, q).data

    rewrite_in_place!(path)
    assert File.read!(path) |> binary_part(100, 8) == :binary.copy(<<0x5A>>, 8)

    assert fd.data == d.data
    assert Core.quantized_matmul(x, fq).data == y
    assert Core.dequantize(fq).data == Core.dequantize(q).data

    for name <- ["d", "q.weight"] do
      assert_raise ArgumentError, ~r/model.safetensors changed since it was opened/, fn ->
        Checkpoint.fetch!(ckpt, name)
      end
    end

    # mmap mode refuses to hand out views of a file changed since open, too.
    checkpoint_dir = Path.join(dir, "again")
    checkpoint!(checkpoint_dir)
    again = Path.join(checkpoint_dir, "model.safetensors")
    File.touch!(again, {{2020, 1, 1}, {0, 0, 0}})
    mapped = Checkpoint.open(checkpoint_dir, mmap: true)
    rewrite_in_place!(again)

    assert_raise ArgumentError, ~r/changed since it was opened/, fn ->
      Checkpoint.fetch!(mapped, "d")
    end
  end

  test "replacing a file by rename (what convert and save do) keeps opened tensors valid", %{
    tmp_dir: dir
  } do
    {d, _} = checkpoint!(dir)
    ckpt = Checkpoint.open(dir)
    mapped = Checkpoint.open(dir, mmap: true)
    view = Checkpoint.fetch!(mapped, "d")
    other = Ref.random_dense({64, 128}, {:f, 32}, 9)
    :ok = Checkpoint.save(dir, %{"d" => other}, force: true)
    # The opened files are the old inodes: still whole, still the old model.
    assert Checkpoint.fetch!(ckpt, "d") == d
    assert view == d and :binary.copy(view.data) == d.data
    assert Checkpoint.fetch!(Checkpoint.open(dir), "d") == other
  end

  test "options are checked", %{tmp_dir: dir} do
    checkpoint!(dir)

    assert_raise ArgumentError, ~r/:mmap option must be true or false, got: :yes/, fn ->
      Checkpoint.open(dir, mmap: :yes)
    end

    assert_raise ArgumentError, ~r/:mmap option/, fn ->
      Safetensors.open!(Path.join(dir, "model.safetensors"), mmap: 1)
    end
  end

  describe "special files never block" do
    defp mkfifo!(path) do
      {_, 0} = System.cmd("mkfifo", [path])
      path
    end

    # Each case must return {:error, message} quickly; all run in one child VM under a timeout,
    # so a regression (open(2) blocking on a FIFO) fails here instead of hanging the suite.
    test "FIFOs as a safetensors file, a shard, the index, config.json (in a child VM)", %{
      tmp_dir: dir
    } do
      fifo = mkfifo!(Path.join(dir, "pipe.safetensors"))

      shard_dir = Path.join(dir, "shard")
      File.mkdir_p!(shard_dir)
      mkfifo!(Path.join(shard_dir, "model.safetensors"))

      index_dir = Path.join(dir, "index")
      checkpoint!(index_dir)
      mkfifo!(Path.join(index_dir, "model.safetensors.index.json"))

      config_dir = Path.join(dir, "config")
      checkpoint!(config_dir)
      File.rm!(Path.join(config_dir, "config.json"))
      mkfifo!(Path.join(config_dir, "config.json"))

      listed_dir = Path.join(dir, "listed")
      checkpoint!(listed_dir)
      mkfifo!(Path.join(listed_dir, "extra.safetensors"))

      code = """
      attempt = fn f ->
        try do
          f.()
          {:error, "no error"}
        rescue
          e in ArgumentError -> {:ok, e.message}
        end
      end

      result = [
        attempt.(fn -> NxQuant.Safetensors.open!(#{inspect(fifo)}) end),
        attempt.(fn -> NxQuant.Safetensors.open!(#{inspect(fifo)}, mmap: true) end),
        attempt.(fn -> NxQuant.Checkpoint.open(#{inspect(fifo)}) end),
        attempt.(fn -> NxQuant.Checkpoint.open(#{inspect(shard_dir)}) end),
        attempt.(fn -> NxQuant.Checkpoint.open(#{inspect(index_dir)}) end),
        attempt.(fn -> NxQuant.Checkpoint.open(#{inspect(config_dir)}) end),
        attempt.(fn -> NxQuant.Checkpoint.open(#{inspect(listed_dir)}) end),
        # More concurrent opens than dirty IO schedulers (10), then ordinary file work.
        1..20
        |> Task.async_stream(fn _ -> attempt.(fn -> NxQuant.Safetensors.open!(#{inspect(fifo)}) end) end,
          max_concurrency: 20, timeout: 30_000)
        |> Enum.map(fn {:ok, r} -> elem(r, 0) end)
        |> Enum.uniq()
        |> Kernel.==([:ok])
        |> Kernel.and(File.read!(#{inspect(Path.join(index_dir, "config.json"))}) != "")
      ]

      IO.puts("RESULT:" <> Base.encode64(:erlang.term_to_binary(result)))
      """

      {output, status} = ChildVM.run(code, 60)
      assert status == 0, "the child VM exited with #{status} (124/137: it hung):\n#{output}"
      [_, b64] = Regex.run(~r/RESULT:(\S+)/, output)

      [st, st_mmap, ck_file, shard, index, config, listed, concurrent] =
        :erlang.binary_to_term(Base.decode64!(b64))

      assert concurrent == true

      for {:ok, message} <- [st, st_mmap] do
        assert message =~ "#{fifo}: not a regular file (it is a FIFO)"
      end

      assert {:ok, m} = ck_file
      assert m =~ "pipe.safetensors" and m =~ "must be a regular file"
      assert {:ok, m} = shard
      assert m =~ "shard/model.safetensors: the shard must be a regular file"
      assert {:ok, m} = index
      assert m =~ "model.safetensors.index.json: the index must be a regular file"
      assert {:ok, m} = config
      assert m =~ "config.json: the config.json must be a regular file"
      assert {:ok, m} = listed
      assert m =~ "extra.safetensors: the shard must be a regular file"
    end

    test "convert skips a FIFO among a single file's model files", %{tmp_dir: dir} do
      src = Path.join(dir, "src")
      checkpoint_dense!(src)
      mkfifo!(Path.join(src, "tokenizer.json"))
      dst = Path.join(dir, "dst")

      {output, status} =
        ChildVM.run(
          "NxQuant.Convert.run(#{inspect(Path.join(src, "model.safetensors"))}, #{inspect(dst)})",
          60
        )

      assert status == 0, output
      assert File.ls!(dst) |> Enum.sort() == ["config.json", "model.safetensors"]
    end
  end

  # A dense checkpoint to convert: one 2-D weight, a norm, config and tokenizer files.
  defp checkpoint_dense!(dir, seed \\ 1) do
    File.mkdir_p!(dir)

    Safetensors.write(Path.join(dir, "model.safetensors"), [
      {"l.weight", Ref.random_dense({32, 128}, {:bf, 16}, seed)},
      {"norm.weight", Ref.random_dense({128}, {:bf, 16}, seed + 1)}
    ])

    Checkpoint.write_config(dir, %{"model_type" => "t#{seed}"})
  end

  # Every file under dir with its bytes (to compare a directory before and after).
  defp snapshot(dir) do
    for path <- Path.wildcard(Path.join(dir, "**"), match_dot: true),
        File.regular?(path),
        into: %{},
        do: {Path.relative_to(path, dir), File.read!(path)}
  end

  describe "convert and save are atomic and never destroy input" do
    test "dst == src, dst inside src, src inside dst are refused; the source is intact", %{
      tmp_dir: dir
    } do
      src = Path.join(dir, "m")
      checkpoint_dense!(src)
      File.write!(Path.join(src, "tokenizer.json"), "{}")
      before = snapshot(src)
      file = Path.join(src, "model.safetensors")

      for {from, to, words} <- [
            {src, src, "is the source directory"},
            {file, src, "is the source directory"},
            {src, src <> "/", "is the source directory"},
            {src, Path.join(src, "out"), "is inside the source directory"},
            {file, Path.join(src, "a/b"), "is inside the source directory"},
            {src, dir, "replacing the destination would destroy the source"}
          ] do
        for force <- [false, true] do
          error = assert_raise ArgumentError, fn -> Convert.run(from, to, force: force) end
          assert error.message =~ words, "#{from} -> #{to}: #{error.message}"
          assert snapshot(src) == before
        end
      end

      # A symlink to the source is the source.
      link = Path.join(dir, "link")
      File.ln_s!(src, link)

      assert_raise ArgumentError, ~r/is the source directory/, fn ->
        Convert.run(src, link, force: true)
      end

      assert snapshot(src) == before
      refute File.exists?(Path.join(src, "out"))
    end

    test "a non-empty destination is refused unless force, which replaces it as a whole", %{
      tmp_dir: dir
    } do
      sharded = Path.join(dir, "sharded")
      File.mkdir_p!(sharded)
      a = Ref.random_dense({32, 128}, {:bf, 16}, 1)
      b = Ref.random_dense({32, 128}, {:bf, 16}, 2)
      Safetensors.write(Path.join(sharded, "model-00001-of-00002.safetensors"), [{"a.weight", a}])
      Safetensors.write(Path.join(sharded, "model-00002-of-00002.safetensors"), [{"b.weight", b}])

      File.write!(
        Path.join(sharded, "model.safetensors.index.json"),
        NxQuant.NIF.json_encode(
          %{
            "weight_map" => %{
              "a.weight" => "model-00001-of-00002.safetensors",
              "b.weight" => "model-00002-of-00002.safetensors"
            }
          },
          false
        )
      )

      single = Path.join(dir, "single")
      checkpoint_dense!(single, 5)
      out = Path.join(dir, "out")

      Convert.run(sharded, out)
      assert File.exists?(Path.join(out, "model.safetensors.index.json"))
      before = snapshot(out)

      error = assert_raise ArgumentError, fn -> Convert.run(single, out) end
      assert error.message =~ "#{out} is not empty: pass force: true (mix task: --force)"
      assert snapshot(out) == before

      Convert.run(Path.join(single, "model.safetensors"), out, force: true)
      assert Enum.sort(File.ls!(out)) == ["config.json", "model.safetensors"]
      assert Checkpoint.names(Checkpoint.open(out)) == ["l.weight", "norm.weight"]
      assert Checkpoint.open(out).config["model_type"] == "t5"
      # Nothing left beside it either.
      assert Enum.sort(File.ls!(dir)) == ["out", "sharded", "single"]

      # An existing empty directory is fine without force; a file is not a destination.
      empty = Path.join(dir, "empty")
      File.mkdir_p!(empty)
      Convert.run(single, empty)
      assert "model.safetensors" in File.ls!(empty)
      File.write!(Path.join(dir, "file"), "x")

      assert_raise ArgumentError, ~r/exists and is not a directory/, fn ->
        Convert.run(single, Path.join(dir, "file"), force: true)
      end

      assert File.read!(Path.join(dir, "file")) == "x"

      assert_raise ArgumentError, ~r/:force option must be true or false/, fn ->
        Convert.run(single, Path.join(dir, "new"), force: "yes")
      end
    end

    test "a failing convert leaves the destination as it was and nothing beside it", %{
      tmp_dir: dir
    } do
      src = Path.join(dir, "src")
      checkpoint_dense!(src)
      out = Path.join(dir, "out")
      Convert.run(src, out)
      before = snapshot(out)

      fail = fn _ -> raise ArgumentError, "injected failure" end

      assert_raise ArgumentError, "injected failure", fn ->
        Convert.run(src, out, force: true, progress: fail)
      end

      assert snapshot(out) == before

      assert_raise ArgumentError, "injected failure", fn ->
        Convert.run(src, Path.join(dir, "fresh"), progress: fail)
      end

      refute File.exists?(Path.join(dir, "fresh"))
      assert Enum.sort(File.ls!(dir)) == ["out", "src"]
    end

    test "a convert killed mid-way (SIGKILL, in a child VM) leaves the destination as it was; a rerun cleans up",
         %{tmp_dir: dir} do
      src = Path.join(dir, "src")
      checkpoint_dense!(src, 3)
      out = Path.join(dir, "out")
      Convert.run(src, out)
      before = snapshot(out)

      # The child kills itself (kill -9) after the first tensor is written to the temporary
      # directory: no cleanup code can run.
      code = """
      kill = fn _ -> System.cmd("kill", ["-9", System.pid()]) end
      NxQuant.Convert.run(#{inspect(src)}, #{inspect(out)}, force: true, progress: kill)
      """

      {output, status} = ChildVM.run(code, 60)
      assert status == 137, "expected SIGKILL (137), got #{status}: #{output}"
      assert snapshot(out) == before
      [leftover] = File.ls!(dir) -- ["out", "src"]
      assert leftover =~ ~r/^\.out\.nx_quant-tmp-\d+-\d+$/

      assert %{quantized: 1} = Convert.run(src, out, force: true)
      assert Enum.sort(File.ls!(dir)) == ["out", "src"]
      refute Enum.any?(Map.keys(snapshot(out)), &String.contains?(&1, "tmp"))
    end

    test "an old directory set aside by a killed swap is put back before anything else", %{
      tmp_dir: dir
    } do
      src = Path.join(dir, "src")
      checkpoint_dense!(src)
      out = Path.join(dir, "out")
      Convert.run(src, out)
      before = snapshot(out)
      # As if killed between renaming out aside and renaming the new one in (pid 1 is not us;
      # use a pid that does not exist).
      aside = Path.join(dir, ".out.nx_quant-old-999999999-1")
      File.rename!(out, aside)

      assert_raise ArgumentError, ~r/is not empty/, fn -> Convert.run(src, out) end
      assert snapshot(out) == before
      refute File.exists?(aside)
    end

    test "mix nx_quant.convert: a non-empty DST needs --force; DST == SRC is refused", %{
      tmp_dir: dir
    } do
      src = Path.join(dir, "src")
      checkpoint_dense!(src)
      out = Path.join(dir, "out")
      Mix.shell(Mix.Shell.Process)

      try do
        Mix.Tasks.NxQuant.Convert.run([src, out, "--quiet"])
        assert_received {:mix_shell, :info, [summary]}
        assert summary =~ "1 quantized"

        assert_raise ArgumentError,
                     ~r/is not empty: pass force: true \(mix task: --force\)/,
                     fn ->
                       Mix.Tasks.NxQuant.Convert.run([src, out, "--quiet"])
                     end

        Mix.Tasks.NxQuant.Convert.run([src, out, "--quiet", "--force", "--bits", "8"])
        assert Checkpoint.open(out).config["quantization"]["bits"] == 8
        before = snapshot(src)

        assert_raise ArgumentError, ~r/is the source directory/, fn ->
          Mix.Tasks.NxQuant.Convert.run([src, src, "--quiet", "--force"])
        end

        assert snapshot(src) == before
      after
        Mix.shell(Mix.Shell.IO)
      end
    end

    test "single-file convert copies only the model files it names", %{tmp_dir: dir} do
      src = Path.join(dir, "src")
      checkpoint_dense!(src)

      for name <- ["tokenizer.json", "tokenizer_config.json", "generation_config.json"],
          do: File.write!(Path.join(src, name), ~s({"n":"#{name}"}))

      File.write!(Path.join(src, "private.txt"), "secret")
      File.write!(Path.join(src, "other.bin"), "x")
      out = Path.join(dir, "out")
      Convert.run(Path.join(src, "model.safetensors"), out)

      assert Enum.sort(File.ls!(out)) ==
               ~w(config.json generation_config.json model.safetensors tokenizer.json
                  tokenizer_config.json)

      assert File.read!(Path.join(out, "tokenizer.json")) == ~s({"n":"tokenizer.json"})
      assert "tokenizer.json" in Convert.model_files()

      # A directory source is the model's directory: its other regular files come along,
      # not hidden files or temporary leftovers.
      File.write!(Path.join(src, ".secret"), "x")
      File.write!(Path.join(src, "model.safetensors.tmp123"), "x")
      out2 = Path.join(dir, "out2")
      Convert.run(src, out2)
      assert "private.txt" in File.ls!(out2)
      refute ".secret" in File.ls!(out2) or "model.safetensors.tmp123" in File.ls!(out2)
    end

    test "save validates config before writing anything; force replaces; an old index never wins",
         %{tmp_dir: dir} do
      t = %{"a" => Ref.random_dense({4}, {:f, 32}, 1)}
      fresh = Path.join(dir, "fresh")

      assert_raise ArgumentError, ~r/config.json: .*cannot encode as JSON/, fn ->
        Checkpoint.save(fresh, t, config: %{"a" => self()})
      end

      refute File.exists?(fresh)

      assert_raise ArgumentError, ~r/:config option must be a map/, fn ->
        Checkpoint.save(fresh, t, config: [1])
      end

      # An old sharded checkpoint in the directory.
      old = Path.join(dir, "old")
      File.mkdir_p!(old)
      Safetensors.write(Path.join(old, "model-00001-of-00001.safetensors"), [{"old", t["a"]}])

      File.write!(
        Path.join(old, "model.safetensors.index.json"),
        NxQuant.NIF.json_encode(
          %{"weight_map" => %{"old" => "model-00001-of-00001.safetensors"}},
          false
        )
      )

      before = snapshot(old)

      assert_raise ArgumentError, ~r/cannot encode as JSON/, fn ->
        Checkpoint.save(old, t, config: %{"a" => self()}, force: true)
      end

      assert_raise ArgumentError, ~r/is not empty/, fn -> Checkpoint.save(old, t) end
      assert snapshot(old) == before

      :ok = Checkpoint.save(old, t, force: true)
      assert Enum.sort(File.ls!(old)) == ["config.json", "model.safetensors"]
      assert Checkpoint.load(old) == t
    end
  end

  test "a per-layer quantization value of the wrong type is an error naming the layer", %{
    tmp_dir: dir
  } do
    q = Core.quantize(Ref.random_dense({4, 128}, {:f, 32}, 1), bits: 4, group_size: 64)
    Safetensors.write(Path.join(dir, "model.safetensors"), [{"l.weight", q}])

    for {value, shown} <- [{"x", ~s("x")}, {5, "5"}, {[1], "[1]"}] do
      Checkpoint.write_config(dir, %{
        "quantization" => %{"bits" => 4, "group_size" => 64, "l" => value}
      })

      error = assert_raise ArgumentError, fn -> Checkpoint.open(dir) end
      assert error.message =~ ~s(the "quantization" entry for layer 'l' must be an object)
      assert error.message =~ "got: #{shown}"
    end

    Checkpoint.write_config(dir, %{"quantization" => "4bit"})

    assert_raise ArgumentError, ~r/"quantization" must be an object, got: "4bit"/, fn ->
      Checkpoint.open(dir)
    end

    # true and an absent entry mean the defaults.
    for layer <- [true, nil] do
      quant = %{"bits" => 4, "group_size" => 64}
      quant = if layer, do: Map.put(quant, "l", layer), else: quant
      Checkpoint.write_config(dir, %{"quantization" => quant})
      assert %NxQuant.QuantizedTensor{} = Checkpoint.fetch!(Checkpoint.open(dir), "l.weight")
    end
  end
end
