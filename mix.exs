defmodule Mix.Tasks.Compile.NxQuantNative do
  @moduledoc """
  Builds the native library (kernels + NIF) with CMake and puts the NIF in `priv/`.

  Hex is not always reachable, so this replaces elixir_make: it configures once, then lets
  CMake's own dependency tracking decide what to rebuild. Environment:

    * `NX_QUANT_BUILD_DIR` - the CMake build directory (default `_build/native`); the test
      script points it at the same directory CTest uses so the kernels build only once.
    * `NX_QUANT_JOBS` - parallel build jobs (default: the number of schedulers).
  """
  use Mix.Task.Compiler

  @impl true
  def run(_args) do
    root = File.cwd!()
    build_dir = System.get_env("NX_QUANT_BUILD_DIR", Path.join(root, "_build/native"))
    priv_dir = Path.join(root, "priv")
    jobs = System.get_env("NX_QUANT_JOBS", Integer.to_string(System.schedulers_online()))
    File.mkdir_p!(build_dir)
    File.mkdir_p!(priv_dir)
    # Mix links _build/ENV/lib/nx_quant/priv to priv/ before compilers run, and only when priv/
    # exists: on a fresh clone it does not yet, so link it now that it does.
    Mix.Project.build_structure()

    unless File.exists?(Path.join(build_dir, "CMakeCache.txt")) do
      cmake!([
        "-S",
        root,
        "-B",
        build_dir,
        "-DCMAKE_BUILD_TYPE=Release",
        "-DNX_QUANT_PRIV_DIR=#{priv_dir}"
      ])
    end

    cmake!(["--build", build_dir, "--target", "nx_quant_nif", "-j", jobs])
    {:ok, []}
  end

  defp cmake!(args) do
    case System.find_executable("cmake") do
      nil ->
        Mix.raise("cmake not found: install cmake (Debian: apt-get install cmake)")

      cmake ->
        {_, status} =
          System.cmd(cmake, args, into: IO.stream(:stdio, :line), stderr_to_stdout: true)

        if status != 0,
          do: Mix.raise("cmake #{Enum.join(args, " ")} failed with status #{status}")
    end
  end
end

defmodule NxQuant.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :nx_quant,
      version: @version,
      elixir: "~> 1.14",
      compilers: [:nx_quant_native] ++ Mix.compilers(),
      start_permanent: Mix.env() == :prod,
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: deps(),
      description:
        "MLX-compatible affine group-wise quantization and fused quantized matmul for Nx on any CPU"
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]

  # Nx is optional: the Nx-free core (and CI) needs no Hex at all. With Hex present, or with
  # NX_QUANT_WITH_NX=1, Nx is added and the Nx face (NxQuant, NxQuant.Backend) compiles.
  # Bumblebee likewise (NX_QUANT_WITH_BUMBLEBEE=1 or Hex): NxQuant.Bumblebee compiles when it is.
  defp deps do
    hex? = Code.ensure_loaded?(Hex)

    nx =
      if System.get_env("NX_QUANT_WITH_NX") == "1" or hex? do
        [{:nx, "~> 0.9", optional: true}]
      else
        []
      end

    bumblebee =
      if System.get_env("NX_QUANT_WITH_BUMBLEBEE") == "1" or hex? do
        [{:bumblebee, "~> 0.7", optional: true}]
      else
        []
      end

    nx ++ bumblebee
  end
end
