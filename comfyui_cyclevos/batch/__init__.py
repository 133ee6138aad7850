"""Many shots in one job: ``cyclevos batch``.

- ``jobs``: the list of videos to segment, from a manifest CSV or a folder convention; shards of it;
  whether a video's output is already finished (resume);
- ``local``: one process, the network loaded once, each video through ``runner.segment_video`` (so every
  video keeps ``segment``'s guarantees), failures recorded and the batch going on, ``batch.csv`` as it goes;
- ``ray_cluster``: the same videos as one Ray task each on a cluster (Ray imported only there).
"""
