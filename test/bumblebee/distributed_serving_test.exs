if Code.ensure_loaded?(Bumblebee) do
  defmodule NxQuant.DistributedServingTest do
    # An Nx.Serving of a quantized model started on one :peer node serves
    # Nx.Serving.batched_run({:distributed, name}, ...) calls made on another :peer node
    # (distributed Erlang on this machine). The quantized weights live in NIF resources on the
    # serving's node only; NxQuant.Bumblebee.distributed/1's postprocessing moves every tensor of
    # a reply to Nx.BinaryBackend before it is sent.
    use ExUnit.Case, async: false
    @moduletag :bumblebee
    @moduletag :distributed
    @moduletag :tmp_dir
    @moduletag timeout: 300_000

    alias NxQuant.{TestServing, TinyMlxCheckpoint}

    setup_all do
      # this node must be alive for :peer nodes connected by distribution
      unless Node.alive?() do
        {_, 0} = System.cmd("epmd", ["-daemon"])
        name = :"nx_quant_test_#{System.unique_integer([:positive])}@127.0.0.1"
        {:ok, _} = :net_kernel.start([name, :longnames])
      end

      :ok
    end

    defp peer!(name) do
      {:ok, peer, node} =
        :peer.start_link(%{
          name: :"#{name}_#{System.unique_integer([:positive])}",
          host: ~c"127.0.0.1",
          longnames: true,
          args: Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
        })

      {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:logger])
      {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:nx])
      {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:bumblebee])
      {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:nx_quant])
      {peer, node}
    end

    # :pg membership reaches the other node asynchronously
    defp await_members(node, name, tries \\ 100) do
      case :erpc.call(node, :pg, :get_members, [Nx.Serving.PG, name]) do
        [_ | _] ->
          :ok

        [] when tries > 0 ->
          Process.sleep(50)
          await_members(node, name, tries - 1)
      end
    end

    test "a serving on one node answers batched_run calls from another", %{tmp_dir: dir} do
      TinyMlxCheckpoint.write!(dir, :qwen3, [])
      {peer_a, a} = peer!(:serving)
      {peer_b, b} = peer!(:client)
      # the peers are linked to this test process: they stop with it whatever happens
      true = :erpc.call(b, Node, :connect, [a])

      gen = :nx_quant_generation
      logits = :nx_quant_logits
      assert {:ok, ^a} = :erpc.call(a, TestServing, :start, [dir, gen, logits], 120_000)
      await_members(b, gen)
      await_members(b, logits)
      # B has no serving of its own: the requests must go to A
      assert :erpc.call(b, Process, :whereis, [gen]) == nil

      # the same model here, run locally, as the reference
      Nx.default_backend(NxQuant.Backend)
      {:ok, info} = NxQuant.Bumblebee.load_model(dir)
      local = TestServing.generation(info)

      # the same length: without :compile the serving batches only equal-length inputs
      prompts = ["5 9 33 71 100", "17 4 120 64 3"]

      replies =
        prompts
        |> Enum.map(fn p ->
          Task.async(fn ->
            :erpc.call(b, Nx.Serving, :batched_run, [{:distributed, gen}, p], 120_000)
          end)
        end)
        |> Task.await_many(120_000)

      for {prompt, reply} <- Enum.zip(prompts, replies) do
        assert %{results: [%{text: text, token_summary: %{output: 8}}]} = reply
        assert %{results: [%{text: ^text}]} = Nx.Serving.run(local, prompt)
        assert text != ""
      end

      # tensors in the reply: plain Nx.BinaryBackend tensors, equal to the local logits
      ids = Nx.tensor([[5, 9, 33, 71]])

      remote = :erpc.call(b, Nx.Serving, :batched_run, [{:distributed, logits}, ids], 120_000)

      assert %Nx.Tensor{data: %Nx.BinaryBackend{}, shape: {1, 4, 128}} = remote
      {_init, predict} = Axon.build(info.model, compiler: Nx.Defn.Evaluator)
      expected = predict.(info.params, %{"input_ids" => ids}).logits
      assert Nx.to_binary(remote) == Nx.to_binary(expected)
      Enum.each([peer_a, peer_b], &:peer.stop/1)
    end

    test "portable/1: quantized tensors dequantized, dense ones on Nx.BinaryBackend" do
      Nx.default_backend(NxQuant.Backend)
      w = Nx.iota({4, 64}, type: :f32) |> Nx.divide(100)
      qw = NxQuant.quantize(w, type: {:s, 4}, group_size: 32)

      %{"w" => [pw], t: {pd, :atom, "text"}} =
        NxQuant.Bumblebee.portable(%{"w" => [qw], t: {Nx.add(w, 1), :atom, "text"}})

      assert %Nx.Tensor{data: %Nx.BinaryBackend{}, type: {:f, 32}} = pw
      assert Nx.to_binary(pw) == Nx.to_binary(NxQuant.dequantize(qw))
      assert %Nx.Tensor{data: %Nx.BinaryBackend{}} = pd
      assert Nx.to_binary(pd) == Nx.to_binary(Nx.add(w, 1))
    end
  end
end
