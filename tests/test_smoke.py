from conftest import stage


def test_tiny_run_writes_every_output(fetched):
    stage("train", "VGG_08", cwd=fetched)
    for path in ["models/VGG_08.pt", "models/VGG_08/epoch_000.pt", "metrics/VGG_08.json",
                 "plots/history/VGG_08.csv", "plots/grad_capture/VGG_08.csv"]:
        assert (fetched / path).is_file(), path
