"""Reference side of tests/aggregation_reference.rs, run with the aws-kinesis-agg venv.

  agg_reference.py decode IN.json   decode our aggregates; one tab-separated line per item:
      AGG <i> <user records> <all flagged aggregated: 0|1> <md5 ok: 0|1>
      REC <i> <j> <subSequenceNumber> <hex partition key> <hex data> <hex explicit hash key or ->
    partition key, data and sub-sequence number come from iter_deaggregate_records; the
    explicit hash key from parsing AggregatedRecord directly (the deaggregator misreports it).
  agg_reference.py consume IN.json  what iter_deaggregate_records makes of arbitrary records
    (broken aggregates included); per item:
      OUT <i> <user records> <error logged: 0|1>
      USER <i> <j> <aggregated: 0|1> <hex partition key> <hex data>
  agg_reference.py encode IN.json   aggregate records with RecordAggregator; per aggregate:
      AGG <hex partition key> <hex data> <user records>

Input is JSON with base64 data (see the Rust test).
"""
import base64
import datetime
import hashlib
import json
import sys

import aws_kinesis_agg
from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from aws_kinesis_agg import messages_pb2


def hex_str(s):
    return s.encode("utf-8").hex()


def user_data(k):
    # Sub-records come back base64-encoded (as Lambda delivers them); a record passed
    # through unaggregated keeps its Boto3 bytes.
    return base64.b64decode(k["data"]) if k.get("aggregated") else k["data"]


def decode(spec):
    for i, item in enumerate(spec["aggregates"]):
        data = base64.b64decode(item["data"])
        record = {
            "SequenceNumber": str(i),
            "PartitionKey": item["partition_key"],
            "ApproximateArrivalTimestamp": datetime.datetime.now(datetime.timezone.utc),
            "Data": data,
        }
        users = list(iter_deaggregate_records([record], data_format="Boto3"))
        protobuf = data[len(aws_kinesis_agg.MAGIC):-aws_kinesis_agg.DIGEST_SIZE]
        md5_ok = hashlib.md5(protobuf).digest() == data[-aws_kinesis_agg.DIGEST_SIZE:]
        parsed = messages_pb2.AggregatedRecord()
        try:
            parsed.ParseFromString(protobuf)
        except Exception:  # reported through the counts and flags below
            parsed = messages_pb2.AggregatedRecord()
        flagged = all(u["kinesis"].get("aggregated") is True for u in users)
        print("\t".join(["AGG", str(i), str(len(users)), str(int(flagged)), str(int(md5_ok))]))
        for j, user in enumerate(users):
            k = user["kinesis"]
            ehk = "-"
            if j < len(parsed.records) and parsed.records[j].HasField("explicit_hash_key_index"):
                ehk = hex_str(parsed.explicit_hash_key_table[parsed.records[j].explicit_hash_key_index])
            print("\t".join([
                "REC", str(i), str(j), str(k.get("subSequenceNumber", "-")),
                hex_str(k["partitionKey"]), user_data(k).hex(), ehk,
            ]))


def consume(spec):
    import contextlib
    import io
    for i, item in enumerate(spec["records"]):
        record = {
            "SequenceNumber": str(i),
            "PartitionKey": item["partition_key"],
            "ApproximateArrivalTimestamp": datetime.datetime.now(datetime.timezone.utc),
            "Data": base64.b64decode(item["data"]),
        }
        log = io.StringIO()
        with contextlib.redirect_stderr(log):
            users = list(iter_deaggregate_records([record], data_format="Boto3"))
        print("\t".join(["OUT", str(i), str(len(users)), str(int(bool(log.getvalue())))]))
        for j, user in enumerate(users):
            k = user["kinesis"]
            pk = k["partitionKey"]
            pk = pk.encode("utf-8") if isinstance(pk, str) else pk
            print("\t".join([
                "USER", str(i), str(j), str(int(k.get("aggregated") is True)),
                pk.hex(), user_data(k).hex(),
            ]))


def encode(spec):
    def emit(agg_record):
        pk, _ehk, data = agg_record.get_contents()
        print("\t".join(["AGG", hex_str(pk), data.hex(), str(agg_record.get_num_user_records())]))

    aggregator = RecordAggregator(max_size=spec["max_size"])
    for rec in spec["records"]:
        full = aggregator.add_user_record(
            rec["partition_key"], base64.b64decode(rec["data"]), rec["explicit_hash_key"])
        if full is not None:
            emit(full)
    last = aggregator.clear_and_get()
    if last is not None:
        emit(last)


if __name__ == "__main__":
    command, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    {"decode": decode, "encode": encode, "consume": consume}[command](spec)
