if Code.ensure_loaded?(Bumblebee) do
  defmodule NxQuant.TestIdTokenizer do
    @moduledoc """
    A tokenizer for tests of Bumblebee's text servings without the `tokenizers` NIF: the text
    is token ids written in decimal, `"5 17 3"` is `[5, 17, 3]`, and decoding writes them back
    (ids below 3 - pad, bos, eos - are dropped, as special tokens are).
    """
    @behaviour Bumblebee.Tokenizer
    @behaviour Bumblebee.Configurable

    defstruct length: nil,
              pad_direction: :right,
              truncate_direction: :right,
              return_attention_mask: true,
              return_token_type_ids: true,
              return_special_tokens_mask: false,
              return_offsets: false,
              return_length: false

    @impl Bumblebee.Configurable
    def config(tokenizer, opts), do: struct!(tokenizer, opts)

    @impl Bumblebee.Tokenizer
    def apply(tokenizer, input) do
      seqs =
        input
        |> List.wrap()
        |> Enum.map(fn text -> text |> String.split() |> Enum.map(&String.to_integer/1) end)

      lengths = Enum.map(seqs, &length/1)
      len = tokenizer.length || Enum.max(lengths)

      {ids, masks} =
        seqs
        |> Enum.map(fn seq ->
          seq = Enum.take(seq, len)
          pad = List.duplicate(0, len - length(seq))
          ones = List.duplicate(1, length(seq))

          if tokenizer.pad_direction == :left,
            do: {pad ++ seq, pad ++ ones},
            else: {seq ++ pad, ones ++ pad}
        end)
        |> Enum.unzip()

      out = %{
        "input_ids" => Nx.tensor(ids, type: :u32),
        "attention_mask" => Nx.tensor(masks, type: :u32)
      }

      if tokenizer.return_length, do: Map.put(out, "length", Nx.tensor(lengths)), else: out
    end

    @impl Bumblebee.Tokenizer
    def decode(tokenizer, [row | _] = ids) when is_list(row),
      do: Enum.map(ids, &decode(tokenizer, &1))

    def decode(_tokenizer, ids), do: ids |> Enum.reject(&(&1 < 3)) |> Enum.join(" ")

    @impl Bumblebee.Tokenizer
    def token_to_id(_tokenizer, token), do: String.to_integer(token)

    @impl Bumblebee.Tokenizer
    def id_to_token(_tokenizer, id), do: Integer.to_string(id)

    @impl Bumblebee.Tokenizer
    def special_tokens(_tokenizer), do: %{pad: "0", bos: "1", eos: "2"}

    @impl Bumblebee.Tokenizer
    def additional_special_tokens(_tokenizer), do: MapSet.new()
  end
end
