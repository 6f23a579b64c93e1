"""GRU4Rec + RaSeRec: both stages on a named dataset.

python examples/gru4rec.py --dataset beauty             # full schedule, one seed
python examples/gru4rec.py --dataset beauty --demo      # a few minutes on a 2-core CPU
python examples/gru4rec.py --dataset beauty --plain     # plain cross-entropy GRU4Rec only
"""

from raserec_adapter.experiments import main

if __name__ == "__main__":
    main("gru4rec", description=__doc__.splitlines()[0])
