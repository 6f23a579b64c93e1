"""SASRec + RaSeRec: both stages on a named dataset.

python examples/sasrec.py --dataset beauty             # full schedule, one seed
python examples/sasrec.py --dataset beauty --demo      # a few minutes on a 2-core CPU
python examples/sasrec.py --dataset beauty --plain     # plain cross-entropy SASRec only
python examples/sasrec.py --pretrain.batching windows  # ~2x faster stage-1 epochs on a CPU
python examples/sasrec.py --help                       # every option, with its default

Stage 1 draws its batches uniformly from all training pairs (``--pretrain.batching random``),
as the released code does: over five seeds on Beauty it trained better encoders, frozen and
with the RAM, than the library's faster default ``"windows"`` batches.
"""

from raserec_adapter.experiments import main

if __name__ == "__main__":
    main("sasrec", description=__doc__.splitlines()[0])
