defmodule NxQuant.Recipe do
  @moduledoc """
  Per-layer quantization recipes for `NxQuant.Convert` (`mix nx_quant.convert --recipe`), the
  role mlx-lm's mixed recipes and `quant_predicate` play: which layers get which format.

  A recipe is a comma-separated list of rules `PATTERN=FORMAT`:

      mlp.experts=mxfp4,self_attn=affine:8:64,lm_head=affine:6,embed_tokens=dense

    * `FORMAT` is `dense` (keep the layer dense), or `MODE[:BITS[:GROUP_SIZE]]` with `MODE`
      one of `affine`, `mxfp4`, `mxfp8`, `nvfp4`. Bits and group size left out take the
      mode's defaults, as in MLX (affine 4 / 64; mxfp4 4 / 32, mxfp8 8 / 32 and nvfp4 4 / 16
      are fixed: other values are an error). So `self_attn=affine:8` is 8-bit, group 64.
    * `PATTERN` is matched against the layer's path (the tensor name without `.weight`) one
      dot-separated component at a time: the pattern's components must appear as a
      contiguous run of the path's components, `*` standing for any one component. So
      `mlp.experts` matches `model.layers.3.mlp.experts.gate_proj`, `layers.0.self_attn`
      only layer 0's attention, and `experts` does not match `shared_experts`.
    * The first rule that matches decides; layers no rule matches get the run's default
      format (`--mode`, `--bits`, `--group-size`).

  A rule only applies to tensors that can be quantized at all (float `*.weight` tensors of
  rank >= 2, not norms, whose last axis divides by the rule's group size: others stay dense,
  as in mlx-lm). A rule that matches an embedding quantizes it even without `--embeddings`;
  `--skip` patterns win over rules.

  From Elixir, `:recipe` is that string, a list of `{pattern, format}` with `format`
  `:dense` or a keyword list `[mode: :mxfp4]`, `[mode: :affine, bits: 8, group_size: 64]`, or
  a function `fn path, info -> ... end` (mlx-lm's `quant_predicate`), called for every tensor
  that could be quantized with its layer path and safetensors header entry
  (`%{dtype: "BF16", shape: {...}, ...}`), returning `nil` or `true` (the default format),
  `false` or `:dense`, or a format keyword list. Every problem is an `ArgumentError` naming
  the option and the rule.
  """

  alias NxQuant.QuantizationConfig

  @type rule :: {[String.t()], :dense | QuantizationConfig.format()}
  @type t :: [rule()] | {:predicate, (String.t(), map() -> term())}

  @doc "The rules of a recipe string, list or function (see the moduledoc); `[]` for `nil`."
  @spec parse!(nil | String.t() | list() | function()) :: t()
  def parse!(nil), do: []
  def parse!(fun) when is_function(fun, 2), do: {:predicate, fun}

  def parse!(text) when is_binary(text) do
    text
    |> String.split(",", trim: true)
    |> Enum.map(&String.trim/1)
    |> Enum.reject(&(&1 == ""))
    |> Enum.map(&parse_rule!/1)
  end

  def parse!(rules) when is_list(rules), do: Enum.map(rules, &rule!/1)

  def parse!(other) do
    raise ArgumentError,
          "convert option :recipe (--recipe) must be a string such as " <>
            "\"mlp.experts=mxfp4,self_attn=affine:8\" or a list of {pattern, format}, got: " <>
            NxQuant.Validate.describe(other)
  end

  @doc """
  The format of the first rule matching layer path `base` (or the predicate's answer for it
  and `info`): a format, `:dense` or `nil` (the default).
  """
  @spec match(t(), String.t(), map() | nil) :: :dense | QuantizationConfig.format() | nil
  def match(rules, base, info \\ nil)

  def match({:predicate, fun}, base, info) do
    case fun.(base, info) do
      answer when answer in [nil, true] ->
        nil

      answer when answer in [false, :dense] ->
        :dense

      format when is_list(format) ->
        format_kw!(format, {:answer, base, format})

      other ->
        raise ArgumentError,
              "convert option :recipe: the function returned #{inspect(other)} for layer " <>
                "#{inspect(base)}; expected nil or true (the default format), false or " <>
                ":dense, or a keyword list such as [mode: :mxfp4]"
    end
  end

  def match(rules, base, _info) do
    path = String.split(base, ".")
    Enum.find_value(rules, fn {pattern, format} -> if contains?(path, pattern), do: format end)
  end

  defp contains?(path, pattern) when length(path) < length(pattern), do: false

  defp contains?([_ | rest] = path, pattern) do
    prefix?(path, pattern) or contains?(rest, pattern)
  end

  defp prefix?(_, []), do: true
  defp prefix?([p | path], ["*" | pattern]) when is_binary(p), do: prefix?(path, pattern)
  defp prefix?([p | path], [p | pattern]), do: prefix?(path, pattern)
  defp prefix?(_, _), do: false

  defp parse_rule!(text) do
    case String.split(text, "=") do
      [pattern, format] ->
        {pattern!(pattern, text), format!(String.trim(format), text)}

      _ ->
        fail!(text, "expected PATTERN=FORMAT (e.g. mlp.experts=mxfp4)")
    end
  end

  defp format!("dense", _rule), do: :dense

  defp format!(text, rule) do
    [mode | numbers] = String.split(text, ":")

    unless mode in QuantizationConfig.modes() do
      fail!(
        rule,
        "unknown format #{inspect(mode)}; expected dense or a mode: " <>
          Enum.join(QuantizationConfig.modes(), ", ")
      )
    end

    {bits, gs} = QuantizationConfig.mode_defaults(mode)

    {bits, gs} =
      case Enum.map(numbers, &integer!(&1, rule)) do
        [] -> {bits, gs}
        [b] -> {b, gs}
        [b, g] -> {b, g}
        _ -> fail!(rule, "expected MODE[:BITS[:GROUP_SIZE]]")
      end

    check!(%{mode: mode, bits: bits, group_size: gs}, rule)
  end

  defp rule!({pattern, :dense}) when is_binary(pattern),
    do: {pattern!(pattern, "#{pattern}=dense"), :dense}

  defp rule!({pattern, format} = rule) when is_binary(pattern) and is_list(format) do
    shown = inspect(rule)
    {pattern!(pattern, shown), format_kw!(format, shown)}
  end

  defp rule!(other), do: fail!(inspect(other), "a rule is {pattern, format}")

  # A format keyword list ([mode: :mxfp4], [bits: 8, group_size: 64], ...); `shown` names the
  # rule in errors.
  defp format_kw!(format, shown) do
    unless Keyword.keyword?(format) and
             Enum.all?(Keyword.keys(format), &(&1 in [:mode, :bits, :group_size])) do
      fail!(shown, "a format is :dense or a keyword list of :mode, :bits and :group_size")
    end

    mode = Keyword.get(format, :mode, :affine)
    mode = if is_atom(mode), do: Atom.to_string(mode), else: mode

    unless mode in QuantizationConfig.modes() do
      fail!(
        shown,
        "unknown mode #{inspect(mode)}; expected one of #{inspect(NxQuant.Validate.modes())}"
      )
    end

    {bits, gs} = QuantizationConfig.mode_defaults(mode)

    check!(
      %{
        mode: mode,
        bits: Keyword.get(format, :bits, bits),
        group_size: Keyword.get(format, :group_size, gs)
      },
      shown
    )
  end

  defp pattern!(pattern, rule) do
    case pattern |> String.trim() |> String.split(".") do
      parts when parts == [""] -> fail!(rule, "the pattern is empty")
      parts -> if "" in parts, do: fail!(rule, "the pattern has an empty component"), else: parts
    end
  end

  defp integer!(text, rule) do
    case Integer.parse(text) do
      {n, ""} -> n
      _ -> fail!(rule, "#{inspect(text)} is not an integer (MODE[:BITS[:GROUP_SIZE]])")
    end
  end

  defp check!(format, rule) do
    QuantizationConfig.check!(format, "the format", "the rule")
  rescue
    e in ArgumentError -> fail!(rule, Exception.message(e))
  end

  defp fail!({:answer, base, format}, message) do
    raise ArgumentError,
          "convert option :recipe: the function's answer #{inspect(format)} for layer " <>
            "#{inspect(base)}: #{message}"
  end

  defp fail!(rule, message) do
    raise ArgumentError,
          "convert option :recipe (--recipe), rule #{inspect(rule)}: #{message}"
  end
end
