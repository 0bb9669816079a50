defmodule NxQuant.ChildVM do
  @moduledoc false
  # Runs Elixir code in a separate OS process (a fresh `elixir` with this build's code path)
  # under `timeout`, so a crash (SIGBUS: exit 135) or a hang fails one test instead of killing
  # or stalling the suite. Returns {output, exit_status}; 124 or 137 means it timed out.

  def run(code, seconds \\ 60) do
    ebin = Path.join(List.to_string(:code.lib_dir(:nx_quant)), "ebin")
    elixir = System.find_executable("elixir") || raise "no elixir executable on PATH"
    timeout = System.find_executable("timeout") || raise "no timeout(1) executable on PATH"

    System.cmd(timeout, ["-k", "5", "#{seconds}", elixir, "-pa", ebin, "-e", code],
      stderr_to_stdout: true
    )
  end
end
