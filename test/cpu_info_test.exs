defmodule NxQuant.CpuInfoTest do
  # NxQuant.NIF.cpu_info/0: the CPU features kernel dispatch uses (c_src/nif/cpu_nif.cpp),
  # which tests read to expect what the kernel that runs computes (NxQuant.TestCpu).
  use ExUnit.Case, async: true

  alias NxQuant.NIF

  @features [:avx2_fma, :avx512, :avx512_vnni, :avx512_bf16, :neon, :neon_dotprod, :neon_i8mm]

  test "reports every feature as a boolean, each extension with its base, and the cap" do
    info = NIF.cpu_info()
    assert Enum.sort(Map.keys(info)) == Enum.sort([:max_isa | @features])
    for key <- @features, do: assert(is_boolean(info[key]), "#{key}: #{inspect(info[key])}")
    assert info.max_isa in [:avx512, :avx2, :neon, :portable, nil]
    assert info.avx2_fma or not info.avx512
    assert info.avx512 or not (info.avx512_vnni or info.avx512_bf16)
    assert info.neon or not info.neon_dotprod
    assert info.neon_dotprod or not info.neon_i8mm
  end

  test "an x86-64 CPU has no NEON features, an aarch64 CPU no x86 ones" do
    info = NIF.cpu_info()
    arch = List.to_string(:erlang.system_info(:system_architecture))

    cond do
      String.starts_with?(arch, "x86_64") ->
        refute info.neon or info.neon_dotprod or info.neon_i8mm

      String.starts_with?(arch, "aarch64") ->
        refute info.avx2_fma or info.avx512
        # Every AArch64 CPU has Advanced SIMD: only a portable cap switches it off.
        assert info.neon or info.max_isa == :portable

      true ->
        :ok
    end
  end
end
