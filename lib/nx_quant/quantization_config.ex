defmodule NxQuant.QuantizationConfig do
  @moduledoc """
  config.json's `"quantization"` block as MLX and mlx-lm read and write it (Nx-free, NIF-free):
  the format of every quantized layer of a checkpoint.

      "quantization": {
        "group_size": 32, "bits": 4, "mode": "mxfp4",
        "model.layers.0.mlp.router": {"group_size": 64, "bits": 8},
        "model.layers.0.self_attn.q_proj": {"group_size": 64, "bits": 8, "mode": "affine"},
        "model.embed_tokens": false
      }

  The rules are mlx-lm's (`load_model`'s class predicate and `mlx.nn.quantize`):

    * the top level is the default format: `"mode"` (default `"affine"`), `"bits"`,
      `"group_size"`;
    * a layer with `NAME.scales` and no entry of its own (or `true`) has the default format;
    * an entry that is an object is passed to the layer's `to_quantized(**entry)`: keys it
      lacks take **that mode's** defaults, not the top level's — `"mode"` defaults to
      `"affine"`, bits and group size to the mode's (affine 4 / 64, mxfp4 4 / 32, mxfp8 8 / 32,
      nvfp4 4 / 16). So `{"group_size": 64, "bits": 8}` under an mxfp4 top level (gpt-oss's
      router) is 8-bit affine. (mlx-lm writes all three keys, and `encode/1` does too: its
      `SwitchLinear.to_quantized` defaults to 64 / 4 whatever the mode, so a microscaled entry
      without a group size fails in mlx-lm where it loads here);
    * `false` means dense.

  `"quantization_config"` is read when `"quantization"` is absent (mlx-lm writes both, equal);
  one with Hugging Face's `"quant_method": "mxfp4"` means mxfp4 (4 bits, group 32), as in
  mlx-lm.

  Formats are maps `%{mode: "affine" | "mxfp4" | "mxfp8" | "nvfp4", bits: b, group_size: g}`.
  """

  @modes ~w(affine mxfp4 mxfp8 nvfp4)
  @defaults %{
    "affine" => {4, 64},
    "mxfp4" => {4, 32},
    "mxfp8" => {8, 32},
    "nvfp4" => {4, 16}
  }
  @affine_bits [2, 3, 4, 5, 6, 8]
  @affine_group_sizes [32, 64, 128]

  @type format :: %{mode: String.t(), bits: pos_integer(), group_size: pos_integer()}

  @doc "MLX's mode names."
  def modes, do: @modes

  @doc "MLX's `{bits, group_size}` defaults of a mode (fixed for the microscaled ones)."
  def mode_defaults(mode), do: Map.fetch!(@defaults, mode)

  @doc """
  The quantization block of a config.json map: `"quantization"`, else an MLX-style
  `"quantization_config"` (`nil` when there is none). `where` names the file in errors.
  """
  @spec block(map(), String.t()) :: map() | nil
  def block(config, where) do
    case config["quantization"] || config["quantization_config"] do
      nil ->
        nil

      %{"quant_method" => "mxfp4"} = hf when not is_map_key(hf, "bits") ->
        %{"mode" => "mxfp4", "bits" => 4, "group_size" => 32}

      %{} = block ->
        block

      other ->
        raise ArgumentError,
              "#{where}: \"quantization\" must be an object, got: #{inspect(other)}"
    end
  end

  @doc """
  The default format: the block's top level, with `opts` (`:mode`, `:bits`, `:group_size`)
  taking precedence. A microscaled mode's fixed bits and group size fill in what is absent;
  affine's missing values stay `nil` (an error when a layer needs them, as in mlx-lm).
  """
  @spec default(map() | nil, keyword(), String.t()) :: %{
          mode: term(),
          bits: term(),
          group_size: term()
        }
  def default(block, opts, where) do
    block = block || %{}
    mode = mode_name(Keyword.get(opts, :mode, block["mode"] || "affine"))
    {bits, gs} = Map.get(@defaults, mode, {nil, nil})
    fixed = mode != "affine"

    unless mode in @modes, do: unknown_mode!(mode, "the top-level \"mode\"", where)

    %{
      mode: mode,
      bits: Keyword.get(opts, :bits, block["bits"] || if(fixed, do: bits)),
      group_size: Keyword.get(opts, :group_size, block["group_size"] || if(fixed, do: gs))
    }
  end

  @doc """
  The format config.json gives layer `base` (a module path such as
  `"model.layers.0.mlp.experts.gate_proj"`): `{:format, format}` (not yet validated: see
  `check!/3`), `:dense` (an entry `false`) or `:default` (no entry, or `true`).
  """
  @spec layer(map() | nil, String.t(), String.t()) :: {:format, map()} | :dense | :default
  def layer(nil, _base, _where), do: :default

  def layer(block, base, where) do
    case Map.get(block, base) do
      absent when absent in [nil, true] ->
        :default

      false ->
        :dense

      %{} = entry ->
        mode = mode_name(Map.get(entry, "mode", "affine"))

        unless mode in @modes,
          do: unknown_mode!(mode, "the \"mode\" of layer '#{printable(base)}'", where)

        {bits, gs} = @defaults[mode]

        {:format,
         %{mode: mode, bits: entry["bits"] || bits, group_size: entry["group_size"] || gs}}

      other ->
        raise ArgumentError,
              "#{where}: the \"quantization\" entry for layer '#{printable(base)}' must be an " <>
                "object such as {\"bits\": 4, \"group_size\": 64} or " <>
                "{\"mode\": \"mxfp4\"}, or false (dense), got: #{inspect(other)}"
    end
  end

  @doc """
  Checks a format (mode known, bits and group size valid for it) and returns it; `what`
  names the layer and `from` where its format came from in the error.
  """
  @spec check!(map(), String.t(), String.t()) :: format()
  def check!(%{mode: mode, bits: bits, group_size: gs} = format, what, from) do
    case mode do
      "affine" ->
        unless bits in @affine_bits and gs in @affine_group_sizes do
          raise ArgumentError,
                "#{what} has bits #{inspect(bits)} and group_size #{inspect(gs)} (from " <>
                  "#{from}) for mode \"affine\"; expected bits in 2..8 (not 7) and " <>
                  "group_size 32, 64 or 128"
        end

      mode when mode in @modes ->
        {b, g} = @defaults[mode]

        unless bits == b and gs == g do
          raise ArgumentError,
                "#{what} has bits #{inspect(bits)} and group_size #{inspect(gs)} (from " <>
                  "#{from}), but mode \"#{mode}\" has #{b} bits and group_size #{g} (fixed)"
        end

      other ->
        unknown_mode!(other, what, nil)
    end

    format
  end

  @doc """
  The block for a checkpoint whose quantized layers have `formats` (`[{base, format}]`), as
  mlx-lm writes it: the most common format at the top level (`"group_size"`, `"bits"`,
  `"mode"`) and every other layer as an entry with all three keys (an entry without `"mode"`
  would read as affine). `nil` when there is no quantized layer.
  """
  @spec encode([{String.t(), format()}]) :: map() | nil
  def encode([]), do: nil

  def encode(formats) do
    {default, _} =
      formats
      |> Enum.frequencies_by(&elem(&1, 1))
      |> Enum.max_by(fn {f, n} -> {n, f.mode == "affine", f.bits, f.group_size} end)

    for {base, format} <- formats, format != default, into: json(default) do
      {base, json(format)}
    end
  end

  @doc """
  The block with `default` as the top level (as mlx-lm's convert writes the run's format) and
  every layer of `formats` in another format as an entry with all three keys.
  """
  @spec encode([{String.t(), format()}], format()) :: map()
  def encode(formats, default) do
    for {base, format} <- formats, format != default, into: json(default) do
      {base, json(format)}
    end
  end

  defp json(%{mode: mode, bits: bits, group_size: gs}),
    do: %{"bits" => bits, "group_size" => gs, "mode" => mode}

  # An atom mode (an option) as MLX's string; anything else as given.
  defp mode_name(mode) when is_atom(mode) and mode not in [nil, true, false],
    do: Atom.to_string(mode)

  defp mode_name(mode), do: mode

  defp unknown_mode!(mode, what, where) do
    raise ArgumentError,
          "#{if where, do: "#{where}: ", else: ""}#{what} is #{inspect(mode)}, an unknown " <>
            "quantization mode; expected one of #{Enum.map_join(@modes, ", ", &inspect/1)}"
  end

  defp printable(text), do: NxQuant.Validate.printable(text)
end
