defmodule NxQuant.OutputDir do
  @moduledoc """
  Writing a checkpoint directory atomically (Nx-free; used by `NxQuant.Checkpoint.save/3` and
  `NxQuant.Convert.run/3`).

  Everything is written into a temporary sibling directory (`.NAME.nx_quant-tmp-OSPID-N`, same
  filesystem) which is renamed into place only when complete, so the destination is either as
  it was or the whole new checkpoint: nothing stale (old shards, an old index, `*.tmp*` files)
  survives, and a run that fails or is killed leaves the destination untouched. A non-empty
  destination is refused unless `force: true`, which replaces it as a whole: the old directory
  is renamed aside (`.NAME.nx_quant-old-...`), the new one renamed into place, then the old
  one deleted. Leftovers of a killed run (whose OS process is gone) are removed by the next
  run into the same destination; an old directory left by a kill between the two renames is
  first put back.
  """

  @doc """
  Calls `fun.(tmp)` to write the new directory's files into `tmp`, then puts `tmp` in place of
  `dst`. Options: `:force` (default false). Returns what `fun` returns.
  """
  @spec write!(Path.t(), keyword(), (Path.t() -> result)) :: result when result: term()
  def write!(dst, opts, fun) do
    dst = Path.expand(dst)
    force = force?(opts)
    File.mkdir_p!(Path.dirname(dst))
    clean_stale!(dst)
    check_destination!(dst, force)
    tmp = sibling(dst, "tmp")
    File.mkdir!(tmp)

    try do
      result = fun.(tmp)
      replace!(tmp, dst)
      result
    after
      File.rm_rf(tmp)
    end
  end

  @doc false
  def force?(opts) do
    case Keyword.get(opts, :force, false) do
      force when is_boolean(force) ->
        force

      other ->
        raise ArgumentError, "the :force option must be true or false, got: #{inspect(other)}"
    end
  end

  @doc """
  Refuses a destination that is the source directory, lies inside it, or contains it (writing
  would destroy the source).
  """
  @spec check_apart!(Path.t(), Path.t()) :: :ok
  def check_apart!(src_dir, dst) do
    src_dir = Path.expand(src_dir)
    dst = Path.expand(dst)

    cond do
      same?(src_dir, dst) ->
        raise ArgumentError,
              "the destination #{dst} is the source directory: writing there would destroy " <>
                "the source checkpoint; choose another destination"

      Enum.any?(ancestors(dst), &same?(&1, src_dir)) ->
        raise ArgumentError,
              "the destination #{dst} is inside the source directory #{src_dir}; choose a " <>
                "destination outside it"

      Enum.any?(ancestors(src_dir), &same?(&1, dst)) ->
        raise ArgumentError,
              "the source #{src_dir} is inside the destination #{dst}: replacing the " <>
                "destination would destroy the source; choose another destination"

      true ->
        :ok
    end
  end

  defp check_destination!(dst, force) do
    case File.stat(dst) do
      {:error, :enoent} ->
        :ok

      {:ok, %File.Stat{type: :directory}} ->
        if not force and File.ls!(dst) != [] do
          raise ArgumentError,
                "the destination #{dst} is not empty: pass force: true (mix task: --force) " <>
                  "to replace it as a whole"
        end

      {:ok, %File.Stat{type: type}} ->
        raise ArgumentError, "the destination #{dst} exists and is not a directory (#{type})"

      {:error, reason} ->
        raise ArgumentError, "cannot use the destination #{dst}: #{:file.format_error(reason)}"
    end
  end

  defp replace!(tmp, dst) do
    case File.rename(tmp, dst) do
      :ok ->
        :ok

      {:error, reason} ->
        unless File.dir?(dst) do
          raise ArgumentError,
                "cannot put the new checkpoint at #{dst}: #{:file.format_error(reason)}"
        end

        # dst is a non-empty directory (forced): swap it out, then delete it.
        old = sibling(dst, "old")
        File.rename!(dst, old)

        case File.rename(tmp, dst) do
          :ok ->
            File.rm_rf!(old)
            :ok

          {:error, reason} ->
            File.rename!(old, dst)

            raise ArgumentError,
                  "cannot put the new checkpoint at #{dst}: #{:file.format_error(reason)}"
        end
    end
  end

  defp sibling(dst, kind) do
    Path.join(
      Path.dirname(dst),
      ".#{Path.basename(dst)}.nx_quant-#{kind}-#{System.pid()}-#{System.unique_integer([:positive])}"
    )
  end

  # Leftovers of runs whose OS process is gone (only where /proc tells).
  defp clean_stale!(dst) do
    parent = Path.dirname(dst)
    prefix = ".#{Path.basename(dst)}.nx_quant-"

    if File.dir?("/proc/self") do
      stale =
        for name <- File.ls!(parent),
            String.starts_with?(name, prefix),
            [kind, pid | _] <- [String.split(String.replace_prefix(name, prefix, ""), "-")],
            not File.exists?("/proc/#{pid}"),
            do: {kind, Path.join(parent, name)}

      # An old directory set aside just before a kill is the destination's last version.
      for {"old", old} <- stale, not File.exists?(dst), do: File.rename!(old, dst)
      for {_, path} <- stale, File.exists?(path), do: File.rm_rf!(path)
    end

    :ok
  end

  defp same?(a, b) do
    a == b or
      match?(
        {{:ok, %File.Stat{inode: i, major_device: d, minor_device: m}},
         {:ok, %File.Stat{inode: i, major_device: d, minor_device: m}}}
        when i != 0,
        {File.stat(a), File.stat(b)}
      )
  end

  # The path's proper ancestors, nearest first.
  defp ancestors(path) do
    parent = Path.dirname(path)
    if parent == path, do: [], else: [parent | ancestors(parent)]
  end
end
