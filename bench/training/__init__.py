"""Training and measuring a model: the training loop (``train``: one optimizer factory, the schedules, ``fit``) and
its one callback list (``hooks``), parameter and FLOP counts and latency (``measure``), and the Jacobian singular
values (``trainability``)."""
