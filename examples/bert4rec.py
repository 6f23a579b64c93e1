"""BERT4Rec + RaSeRec: both stages on a named dataset.

python examples/bert4rec.py --dataset beauty             # full schedule, one seed
python examples/bert4rec.py --dataset beauty --demo      # a few minutes on a 2-core CPU
python examples/bert4rec.py --dataset beauty --plain     # plain BERT4Rec only
python examples/bert4rec.py --readout mask --objective cloze   # BERT4Rec's own cloze task
python examples/bert4rec.py --no-head                    # score the last layer's output directly
python examples/bert4rec.py --positions end              # positions count from the end

By default the representation is BERT4Rec's (bidirectional) output at the last item, trained
with the library's next-item cross-entropy (plus the retrieval loss unless ``--plain``): how
the paper's Table 3 is reproduced. ``--readout mask`` reads it at a ``[mask]`` token appended
after the last item instead; with ``--objective cloze`` stage 1 then trains BERT4Rec's own
cloze (masked-item) task on each training prefix followed by its next item.
"""

from raserec_adapter.experiments import main

if __name__ == "__main__":
    main("bert4rec", description=__doc__.splitlines()[0])
