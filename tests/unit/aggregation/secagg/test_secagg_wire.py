from hypothesis import given, settings
from hypothesis import strategies as st

from fedsec.aggregation.secagg import phases as ph
from fedsec.wire.proto import secagg_pb2 as pb


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=300)), max_size=20))
def test_spliced_relay_messages_parse_as_protobuf_builds_them(entries: list[tuple[int, bytes]]) -> None:
    spliced = ph.repeated(1, [ph.sealed(peer, ct) for peer, ct in entries])
    built = pb.SecAggMaskedInputRequest()
    for peer, ct in entries:
        built.shares.add(peer=peer, ciphertext=ct)
    assert pb.SecAggMaskedInputRequest.FromString(spliced) == built
    adverts = [pb.SecAggPeerAdvert(index=p, advert=pb.SecAggKeyAdvert(cert=ct)) for p, ct in entries]
    share_req = pb.SecAggShareRequest.FromString(ph.repeated(1, [a.SerializeToString() for a in adverts]))
    assert list(share_req.peers) == adverts
