"""The paper's uses of the cycle, built on the network: gradient correction of a prediction (Eq. 5), the
cycle confidence of a written mask (Eq. 2 as a check), cycle-ERF maps (Eq. 6), and test-time adaptation of
the weights to one video (Eq. 2-4 at test time).
"""
